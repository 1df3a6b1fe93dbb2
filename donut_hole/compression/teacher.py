"""``donut-hole train``: build or load a teacher, then run the training loop on a dataset."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from donut_hole.compression.recipe import RecipeError, TeacherRecipe, save_recipe
from donut_hole.compression.train import train
from donut_hole.evaluation.dataset import read_dataset
from donut_hole.model.build import Preset, load_model, new_model, preset_with
from donut_hole.model.tokens import field_tokens

log = logging.getLogger(__name__)


def train_teacher(
    recipe: TeacherRecipe, *, train_dir: Path, val_dir: Path, out_dir: Path, resume: bool = False
) -> list[dict[str, Any]]:
    """Train a teacher as the recipe says; the model lands in ``out_dir/model``."""
    train_samples = read_dataset(train_dir)
    val_samples = read_dataset(val_dir)
    out_dir = Path(out_dir)
    save_recipe(recipe, out_dir / "recipe.yaml")
    if recipe.init == "preset":
        model, processor = new_model(
            teacher_preset(recipe),
            documents=[s.gt_parse for s in train_samples],
            corpus_vocab_size=recipe.model.corpus_vocab_size,
            image_size=recipe.model.image_size,
            seed=recipe.train.seed,
        )
    else:
        # fp32 master weights whatever the folder stores (a checkpoint may be kept in bf16 to stay small)
        model, processor = load_model(recipe.init, dtype=torch.float32)
        add_field_tokens(model, processor.tokenizer, [s.gt_parse for s in train_samples])
    log.info("training teacher: %d train / %d val documents", len(train_samples), len(val_samples))
    return train(
        model,
        processor,
        train_samples=train_samples,
        val_samples=val_samples,
        config=recipe.train,
        out_dir=out_dir,
        resume=resume,
    )


def teacher_preset(recipe: TeacherRecipe) -> Preset:
    """The recipe's preset with its ``model.overrides``; an unknown field is a :class:`RecipeError`."""
    try:
        return preset_with(recipe.model.preset, recipe.model.overrides)
    except ValueError as exc:
        raise RecipeError(f"model.overrides: {exc}") from exc


def add_field_tokens(model: Any, tokenizer: Any, documents: list[dict[str, Any]]) -> int:
    """Fine-tuning a published DONUT on new fields: add their tags as special tokens, grow the embeddings."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in field_tokens(documents) if t not in vocab]
    if not missing:
        return 0
    tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    model.decoder.resize_token_embeddings(len(tokenizer))
    model.config.decoder.vocab_size = len(tokenizer)
    log.info("added %d field tokens to the tokenizer", len(missing))
    return len(missing)
