"""What a training run measures while it trains: held-out field F1 and nTED accuracy (per document type),
reading pages' character error rate per level, and the record each evaluation appends to the curve.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from transformers import DonutProcessor, VisionEncoderDecoderModel

from donut_hole.compression.curriculum import READING_TASK_TOKEN, render
from donut_hole.compression.recipe import CurriculumConfig, TrainConfig
from donut_hole.evaluation.dataset import Sample
from donut_hole.evaluation.evaluate import evaluate_reader
from donut_hole.evaluation.metrics import levenshtein
from donut_hole.model.predict import DonutReader


def score_model(
    model: VisionEncoderDecoderModel,
    processor: DonutProcessor,
    samples: Sequence[Sample],
    *,
    batch_size: int,
    max_new_tokens: int | None,
) -> dict[str, Any]:
    """Field F1 / nTED accuracy of the in-memory model on ``samples`` (no save needed), and the field F1 of
    each document type (``f1_<type>``)."""
    was_training = model.training
    reader = DonutReader(model, processor, max_new_tokens=max_new_tokens)
    evaluation = evaluate_reader(reader, samples, batch_size=batch_size, progress=False)
    model.train(was_training)
    by_type = {f"f1_{kind}": result.f1 for kind, result in evaluation.by_type().items()}
    return {"f1": evaluation.result.f1, "ted_accuracy": evaluation.result.ted_accuracy} | by_type


def reached_target(history: Sequence[dict[str, Any]], *, step: int, target_f1: float | None) -> bool:
    """Whether the evaluation made at ``step`` (if any) reached ``target_f1``.

    >>> reached_target([{"step": 5, "f1": 0.96}], step=5, target_f1=0.95)
    True
    """
    if target_f1 is None or not history or history[-1]["step"] != step:
        return False
    return float(history[-1].get("f1", 0.0)) >= target_f1


READING_VAL_SEED = 1000
"""Seed of the held-out reading pages (the training curriculum's seed is another)."""


def reading_pages(
    curriculum: CurriculumConfig, processor: DonutProcessor, *, count: int
) -> dict[str, list[tuple[Image.Image, str]]]:
    """``count`` held-out (image, text) reading pages per reading level the curriculum uses."""
    height, width = (
        int(v) for v in (processor.image_processor.size["height"], processor.image_processor.size["width"])
    )
    levels = sorted(
        {s.split("/", 1)[1] for stage in curriculum.stages for s in stage.mix if s.startswith("reading/")}
    )
    pages: dict[str, list[tuple[Image.Image, str]]] = {}
    for level in levels:
        rendered = [
            render(f"reading/{level}", seed=READING_VAL_SEED, index=i, size=(width, height))
            for i in range(count)
        ]
        pages[level] = [(r.image, r.target) for r in rendered]
    return pages


def reading_cer(
    model: VisionEncoderDecoderModel,
    processor: DonutProcessor,
    pages: Sequence[tuple[Image.Image, str]],
    *,
    batch_size: int,
    max_new_tokens: int | None,
) -> float:
    """Character error rate (edits / characters of the truth, over all pages) of greedy reading."""
    reader = DonutReader(model, processor, max_new_tokens=max_new_tokens, task_token=READING_TASK_TOKEN)
    edits = chars = 0
    for i in range(0, len(pages), batch_size):
        chunk = pages[i : i + batch_size]
        read = reader.generate(reader.pixel_values([image for image, _ in chunk]))
        for (_, truth), prediction in zip(chunk, read, strict=True):
            edits += levenshtein(prediction.sequence, truth)
            chars += len(truth)
    return round(edits / max(1, chars), 4)


def evaluate_run(
    model: VisionEncoderDecoderModel,
    processor: DonutProcessor,
    *,
    step: int,
    config: TrainConfig,
    eval_set: Sequence[Sample],
    reading_set: dict[str, list[tuple[Image.Image, str]]],
    train_loss: float | None,
    cpu_seconds: float,
    on_eval: Callable[[int], dict[str, Any]] | None,
) -> dict[str, Any]:
    """One evaluation record: held-out field F1 / nTED, reading CER per level, and ``on_eval``'s fields."""
    record: dict[str, Any] = {
        "step": step,
        "images": step * config.batch_size,
        "cpu_hours": round(cpu_seconds / 3600, 4),
        "train_loss": train_loss,
    }
    model.eval()
    if eval_set:
        record.update(
            score_model(
                model, processor, eval_set, batch_size=config.batch_size, max_new_tokens=config.max_new_tokens
            )
        )
    for level, pages in reading_set.items():
        record[f"cer_{level}"] = reading_cer(
            model, processor, pages, batch_size=config.batch_size, max_new_tokens=config.max_new_tokens
        )
    model.train()
    if on_eval is not None:
        record.update(on_eval(step))
    return record


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
