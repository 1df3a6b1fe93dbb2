"""``donut-hole compress``: teacher → DONUT-hole student, with the side-by-side report.

load teacher → build the student (:func:`~donut_hole.compression.student.build_student`: fewer Swin blocks
and decoder layers, weights copied, structured FFN pruning) → distill (CE + KL at temperature T +
hidden-state terms) while pruning gradually to the target density → make sparsity permanent → save →
evaluate teacher and student on the same validation set → :class:`~.report.CompressReport`.

Density target: ``prune.target_density`` is *nonzero prunable weights of the student / prunable weights of
the teacher*. Fewer layers and FFN removal already lower it; magnitude pruning covers the rest, at a
density over the student's own prunable weights of ``target × teacher_prunable / student_prunable``.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from transformers import VisionEncoderDecoderModel

from donut_hole.compression.batches import target_texts
from donut_hole.compression.distill import (
    distillation_loss,
    forward_with_cross_attention,
    shift_for_decoder,
)
from donut_hole.compression.prune import MagnitudePruner, apply_semi_structured_, density_report
from donut_hole.compression.recipe import CompressRecipe, DistillConfig, save_recipe
from donut_hole.compression.report import (
    CompressReport,
    ModelSide,
    cka_analysis,
    folder_size,
    measure_latency,
    write_report,
)
from donut_hole.compression.student import (
    LayerMap,
    build_student,
    processor_size,
    resize_pixels,
)
from donut_hole.compression.student import student_processor as student_processor_for
from donut_hole.compression.train import train, training_device
from donut_hole.compression.vocab import prune_vocabulary
from donut_hole.evaluation.dataset import Sample, read_dataset
from donut_hole.evaluation.evaluate import Evaluation, evaluate_reader
from donut_hole.evaluation.metrics import evaluate
from donut_hole.model.build import count_parameters, load_model, save_model, write_compression_record
from donut_hole.model.predict import DonutReader, describe_cpu

log = logging.getLogger(__name__)


class DistillObjective:
    """Student loss against a frozen teacher on the same batch (teacher forced, shift done here)."""

    def __init__(
        self,
        teacher: VisionEncoderDecoderModel,
        *,
        weights: DistillConfig,
        layer_map: LayerMap,
        pad_token_id: int,
        student_size: tuple[int, int] | None = None,
    ):
        self.teacher = teacher.eval().requires_grad_(False)
        self.weights, self.layer_map, self.pad_token_id = weights, layer_map, pad_token_id
        self.hidden = weights.hidden_encoder > 0 or weights.hidden_decoder > 0
        self.attention = weights.attention > 0
        self.attn_implementation = teacher.decoder.config._attn_implementation  # how both read, after
        if self.attention:
            teacher.decoder.set_attn_implementation("eager")  # attention maps are not returned by SDPA
        self.student_size = student_size  # (height, width) when the student reads smaller images

    def __call__(
        self, model: VisionEncoderDecoderModel, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        decoder_input_ids, labels = shift_for_decoder(batch["input_ids"], pad_token_id=self.pad_token_id)
        pixels = batch["pixel_values"]
        with torch.no_grad():
            teacher_out = self._forward(self.teacher, pixels, decoder_input_ids)
        if self.student_size is not None:
            pixels = resize_pixels(pixels, self.student_size)
        if self.attention and model.decoder.config._attn_implementation != "eager":
            model.decoder.set_attn_implementation("eager")
        student_out = self._forward(model, pixels, decoder_input_ids)
        return distillation_loss(
            student_out, teacher_out, labels, weights=self.weights, layer_map=self.layer_map
        )

    def restore(self, student: VisionEncoderDecoderModel) -> None:
        """Both decoders back to the teacher's own attention implementation, as they are read (and timed)
        after training."""
        if self.attention:
            for model in (self.teacher, student):
                model.decoder.set_attn_implementation(self.attn_implementation)

    def _forward(
        self, model: VisionEncoderDecoderModel, pixels: torch.Tensor, decoder_input_ids: torch.Tensor
    ) -> Any:
        """Teacher-forced outputs, with the decoder's attention maps when the attention term needs them."""
        if self.attention:
            return forward_with_cross_attention(
                model, pixels, decoder_input_ids, output_hidden_states=self.hidden
            )
        return model(
            pixel_values=pixels, decoder_input_ids=decoder_input_ids, output_hidden_states=self.hidden
        )


def compress(
    recipe: CompressRecipe,
    *,
    teacher_path: Path,
    train_dir: Path | None,
    val_dir: Path,
    out_dir: Path,
    name: str = "donut-hole",
    resume: bool = False,
    progress: bool = True,
) -> CompressReport:
    """Build, train and save the student in ``out_dir/model``; write ``out_dir/report.{json,md}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_recipe(recipe, out_dir / "recipe.yaml")
    steps = recipe.train.steps
    if recipe.data is not None and train_dir is not None:
        raise ValueError(
            "the recipe renders its training scans ('data'): drop --train, or the recipe's 'data' section"
        )
    if steps > 0 and train_dir is None and recipe.data is None:
        raise ValueError(
            "training data is needed when train.steps > 0: --train FOLDER, or a 'data' curriculum"
        )
    if recipe.prune.vocabulary and train_dir is None:
        raise ValueError("training data (--train) is needed for prune.vocabulary: it sets the tokens kept")
    needs_train = steps > 0 or recipe.prune.vocabulary
    train_samples = read_dataset(train_dir) if needs_train and train_dir is not None else []
    val_samples = read_dataset(val_dir)
    device = training_device(recipe.train.device)
    teacher, processor = load_model(teacher_path, device=device, task_prompt=recipe.task_prompt)

    built = build_student(teacher, recipe)
    student, layer_map, density, structure = built.model, built.layer_map, built.density, built.structure
    student_processor = student_processor_for(processor, recipe.student.image_size)
    student_size = processor_size(student_processor) if recipe.student.image_size else None
    (out_dir / "layer_map.json").write_text(layer_map.to_json(), encoding="utf-8")
    pruner = None
    if density < 1.0:
        start = int(recipe.prune.start_fraction * steps)
        end = max(start, int(recipe.prune.end_fraction * steps))
        pruner = MagnitudePruner(
            student, final_density=density, start_step=start, end_step=end, scope=recipe.prune.scope
        )

    history: list[dict[str, Any]] = []
    if steps > 0:
        objective = DistillObjective(
            teacher,
            weights=recipe.distill,
            layer_map=layer_map,
            pad_token_id=processor.tokenizer.pad_token_id,
            student_size=student_size,
        )
        history = train(
            student,
            processor,
            train_samples=train_samples,
            val_samples=val_samples,
            config=recipe.train,
            out_dir=out_dir,
            objective=objective,
            pruner=pruner,
            on_eval=lambda _step: {
                "density": density_report(student, teacher=teacher)["prunable_density_vs_teacher"]
            },
            resume=resume,
            progress=progress,
            save=False,
            eval_processor=student_processor,
            curriculum=recipe.data,
        )
        objective.restore(student)
    elif pruner is not None:
        pruner.step(pruner.end_step)  # one shot: no training, straight to the target density
    if pruner is not None:
        pruner.make_permanent_()
    if recipe.prune.semi_structured:
        structure["semi_structured"] = {
            k: v for k, v in apply_semi_structured_(student).items() if k != "skipped"
        }
    student.eval()
    token_map = None
    if recipe.prune.vocabulary:
        corpus = target_texts([s.gt_parse for s in train_samples], teacher, processor)
        student_processor, pruning = prune_vocabulary(student, student_processor, corpus)
        token_map = pruning.token_map(student_processor.tokenizer.unk_token_id)
        structure["vocabulary"] = pruning.summary()
    student_dir = save_model(student, student_processor, out_dir / "model")
    write_compression_record(
        student_dir,
        teacher=Path(teacher_path).resolve().name,
        density=density_report(student, teacher=teacher),
        recipe=name,
    )

    report = build_report(
        teacher,
        student,
        processor,
        val_samples,
        student_processor=student_processor,
        student_token_map=token_map,
        recipe=recipe,
        layer_map=layer_map,
        history=history,
        structure=structure,
        teacher_path=Path(teacher_path),
        student_path=student_dir,
        val_dir=Path(val_dir),
        name=name,
        progress=progress,
    )
    write_report(report, out_dir)
    return report


def _evaluate_with_bar(
    reader: DonutReader, samples: list[Sample], *, batch_size: int, bar: Progress, task: TaskID
) -> Evaluation:
    """``evaluate_reader`` chunk by chunk, advancing ``task`` (one live display: the report's bar)."""
    parts = []
    for offset in range(0, len(samples), batch_size):
        chunk = samples[offset : offset + batch_size]
        parts.append(evaluate_reader(reader, chunk, batch_size=batch_size, progress=False))
        bar.advance(task, len(chunk))
    records = [r for part in parts for r in part.records]
    result = evaluate([r["prediction"] for r in records], [r["ground_truth"] for r in records])
    return Evaluation(result=result, records=records, seconds=sum(part.seconds for part in parts))


def build_report(
    teacher: VisionEncoderDecoderModel,
    student: VisionEncoderDecoderModel,
    processor: Any,
    val_samples: list[Sample],
    *,
    recipe: CompressRecipe,
    student_processor: Any | None = None,
    student_token_map: torch.Tensor | None = None,
    layer_map: LayerMap,
    history: list[dict[str, Any]],
    structure: dict[str, Any],
    teacher_path: Path,
    student_path: Path,
    val_dir: Path,
    name: str,
    progress: bool = False,
) -> CompressReport:
    """Measure both models on the same documents, in this run (``processor`` is the teacher's).

    With ``progress`` a bar shows the phase (evaluation per side, latency, then CKA) and the documents done.
    """
    cfg = recipe.report
    evaluated = val_samples[: cfg.eval_samples] if cfg.eval_samples else val_samples
    sides: dict[str, ModelSide] = {}
    sides_models = (
        ("teacher", teacher, processor, teacher_path),
        ("student", student, student_processor or processor, student_path),
    )
    columns = (
        TextColumn("report: {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, disable=not progress, transient=True) as bar:
        readers: dict[str, DonutReader] = {}
        evaluations: dict[str, dict[str, Any]] = {}
        for side, model, side_processor, _path in sides_models:
            reader = DonutReader(model, side_processor, max_new_tokens=recipe.train.max_new_tokens)
            task = bar.add_task(f"{side}: field F1 and nTED", total=len(evaluated))
            evaluation = _evaluate_with_bar(reader, evaluated, batch_size=cfg.batch_size, bar=bar, task=task)
            readers[side], evaluations[side] = reader, evaluation.result.to_dict()
            log.info("%s: %s", side, evaluations[side])
        latency_task = bar.add_task("latency, both models in turn", total=1)
        latency = measure_latency(
            readers,
            val_samples[: cfg.latency_samples],
            repeats=cfg.latency_repeats,
            batch_size=cfg.batch_size,
        )
        bar.advance(latency_task)
        for side, model, _processor, path in sides_models:
            sides[side] = ModelSide(
                parameters=count_parameters(model),
                density=density_report(model, teacher=teacher),
                file_bytes=folder_size(path),
                eval=evaluations[side],
                latency=latency[side],
            )
        cka_task = bar.add_task("CKA per layer", total=1)
        own = processor_size(student_processor or processor)
        cka = cka_analysis(
            teacher,
            student,
            processor,
            val_samples[: cfg.cka_samples],
            pairs=layer_map.hidden_pairs(),
            batch_size=cfg.batch_size,
            student_token_map=student_token_map,
            student_size=None if own == processor_size(processor) else own,
        )
        bar.advance(cka_task)
    device = next(student.parameters()).device
    return CompressReport(
        name=name,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=f"{describe_cpu()}, {torch.get_num_threads()} threads"
        + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
        latency_device=device.type,
        teacher_path=str(teacher_path),
        student_path=str(student_path),
        val_dir=str(val_dir),
        recipe=json.loads(recipe.model_dump_json()),
        teacher=sides["teacher"],
        student=sides["student"],
        cka=cka,
        history=history,
        student_structure=structure,
        target_density=recipe.prune.target_density,
    )
