"""``donut-hole train``: build or load a teacher, then run the training loop on a dataset."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import torch

from donut_hole.compression.curriculum import READING_TASK_TOKEN
from donut_hole.compression.guided import GuidedObjective, encoder_grid
from donut_hole.compression.recipe import RecipeError, TeacherRecipe, save_recipe
from donut_hole.compression.train import train
from donut_hole.documents.values import sample_document
from donut_hole.evaluation.dataset import read_dataset
from donut_hole.model.build import Preset, load_model, new_model, preset_with, resize_input
from donut_hole.model.tokens import field_tokens

log = logging.getLogger(__name__)


class RecipeDataError(ValueError):
    """A teacher recipe and its data do not go together (no training data, or guidance without rendering)."""


def vocabulary_documents(kinds: list[str], *, per_kind: int = 300) -> list[dict[str, Any]]:
    """Parses of every kind a curriculum renders, enough to meet each field tag (a fixed seed)."""
    rng = random.Random("vocabulary")
    return [sample_document(kind, rng) for kind in kinds for _ in range(per_kind)]


def train_teacher(
    recipe: TeacherRecipe,
    *,
    train_dir: Path | None,
    val_dir: Path,
    out_dir: Path,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Train a teacher as the recipe says; the model lands in ``out_dir/model``.

    With a ``data`` curriculum in the recipe the training data is rendered on the fly and ``train_dir``
    may be None; otherwise ``train_dir`` is read.
    """
    if recipe.data is None and train_dir is None:
        raise RecipeDataError(
            "no training data: pass a dataset folder, or give the recipe a 'data' curriculum"
        )
    if recipe.guide is not None and recipe.data is None:
        raise RecipeDataError("'guide' needs rendered training data: add a 'data' curriculum to the recipe")
    train_samples = read_dataset(train_dir) if recipe.data is None and train_dir is not None else []
    val_samples = read_dataset(val_dir)
    documents = [s.gt_parse for s in train_samples]
    if recipe.data is not None:
        documents += vocabulary_documents(recipe.data.documents()) + [s.gt_parse for s in val_samples]
    out_dir = Path(out_dir)
    save_recipe(recipe, out_dir / "recipe.yaml")
    extra_tokens = [READING_TASK_TOKEN] if recipe.data is not None else []
    if recipe.init == "preset":
        model, processor = new_model(
            teacher_preset(recipe),
            documents=documents,
            corpus_vocab_size=recipe.model.corpus_vocab_size,
            image_size=recipe.model.image_size,
            seed=recipe.train.seed,
            extra_tokens=extra_tokens,
        )
    else:
        # fp32 master weights whatever the folder stores (a checkpoint may be kept in bf16 to stay small)
        model, processor = load_model(recipe.init, dtype=torch.float32, task_prompt=recipe.task_prompt)
        add_field_tokens(model, processor.tokenizer, documents, extra=extra_tokens)
        if recipe.model.image_size is not None:
            try:
                resized = resize_input(model, processor, recipe.model.image_size)
            except ValueError as exc:
                raise RecipeError(f"model.image_size: {exc}") from exc
            if resized:
                log.info("fine-tuning at %dx%d (height x width)", *recipe.model.image_size)
    objective = None
    if recipe.guide is not None:
        size = processor.image_processor.size
        grid, _ = encoder_grid(model, (int(size["height"]), int(size["width"])))
        objective = GuidedObjective(
            model, recipe.guide, pad_token_id=processor.tokenizer.pad_token_id, grid=grid
        )
    source = "rendered on the fly" if recipe.data is not None else f"{len(train_samples)} train"
    log.info("training teacher: %s / %d val documents", source, len(val_samples))
    return train(
        model,
        processor,
        train_samples=train_samples,
        val_samples=val_samples,
        config=recipe.train,
        out_dir=out_dir,
        objective=objective,
        resume=resume,
        curriculum=recipe.data,
    )


def teacher_preset(recipe: TeacherRecipe) -> Preset:
    """The recipe's preset with its ``model.overrides``; an unknown field is a :class:`RecipeError`."""
    try:
        return preset_with(recipe.model.preset, recipe.model.overrides)
    except ValueError as exc:
        raise RecipeError(f"model.overrides: {exc}") from exc


def add_field_tokens(
    model: Any, tokenizer: Any, documents: list[dict[str, Any]], *, extra: list[str] | None = None
) -> int:
    """Fine-tuning a published DONUT on new fields: add their tags (and ``extra`` special tokens, such as
    the reading task's start token) to the tokenizer, grow the embeddings."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in [*field_tokens(documents), *(extra or [])] if t not in vocab]
    if not missing:
        return 0
    tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    model.decoder.resize_token_embeddings(len(tokenizer))
    model.config.decoder.vocab_size = len(tokenizer)
    log.info("added %d field tokens to the tokenizer", len(missing))
    return len(missing)
