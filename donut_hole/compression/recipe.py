"""Recipes: one flat YAML per experiment, validated by pydantic and saved beside every run.

``TeacherRecipe`` drives ``donut-hole train``; ``CompressRecipe`` drives ``donut-hole compress``. Unknown
keys are errors, so a typo in a recipe fails before hours of training, not after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from donut_hole.compression.curriculum import CurriculumConfig
from donut_hole.compression.guided import GuideConfig
from donut_hole.compression.train import TrainConfig


class RecipeError(ValueError):
    """A recipe file is missing, not YAML, or holds a bad value; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeacherModel(_Strict):
    preset: Literal["tiny", "donut-base"] = "tiny"
    image_size: tuple[int, int] | None = Field(None, description="(height, width); default: the preset's.")
    corpus_vocab_size: int = Field(
        0, ge=0, description="BPE vocabulary learned on the values; 0 = characters."
    )
    overrides: dict[str, Any] = Field(default_factory=dict, description="Preset fields to change.")


class TeacherRecipe(_Strict):
    """Train a DONUT teacher from scratch (``init: preset``) or fine-tune one (``init: PATH``)."""

    init: str = Field("preset", description="'preset' to start from random weights, or a model folder.")
    model: TeacherModel = TeacherModel()
    data: CurriculumConfig | None = Field(
        None, description="Render the training data on the fly by this curriculum (no --train folder)."
    )
    guide: GuideConfig | None = Field(
        None, description="Guided-reading losses (need rendered data: a 'data' curriculum)."
    )
    train: TrainConfig = TrainConfig()


class StudentConfig(_Strict):
    encoder_depths: list[int] = Field(description="Swin blocks per stage in the student, e.g. [2, 2, 6, 2].")
    decoder_layers: int = Field(ge=1, description="mBART decoder layers in the student.")
    selection: Literal["uniform", "first"] = "uniform"


class DistillConfig(_Strict):
    ce: float = Field(1.0, ge=0, description="Cross-entropy on the ground-truth tokens.")
    kd: float = Field(1.0, ge=0, description="KL between teacher and student logits at temperature T (× T²).")
    hidden_encoder: float = Field(0.0, ge=0, description="MSE between matched Swin stage outputs.")
    hidden_decoder: float = Field(0.0, ge=0, description="MSE between matched decoder layer outputs.")
    temperature: float = Field(2.0, gt=0)


class PruneConfig(_Strict):
    target_density: float = Field(
        0.46,
        gt=0,
        le=1,
        description="Nonzero prunable weights of the student / prunable weights of the teacher.",
    )
    ffn_keep_ratio: float = Field(1.0, gt=0, le=1, description="Structured: FFN neurons kept per layer.")
    scope: Literal["global", "layer"] = "global"
    start_fraction: float = Field(
        0.1, ge=0, le=1, description="Gradual pruning starts at this fraction of steps."
    )
    end_fraction: float = Field(0.7, ge=0, le=1, description="...and reaches the target here.")
    semi_structured: bool = Field(False, description="Also impose a 2:4 pattern (GPU sparse kernels).")
    vocabulary: bool = Field(
        False,
        description="Keep only the output tokens the training targets use (embedding / lm_head rows); "
        "needs the training set.",
    )


class ReportConfig(_Strict):
    cka_samples: int = Field(64, ge=4, description="Validation documents for CKA.")
    eval_samples: int = Field(0, ge=0, description="Validation documents scored; 0 = all.")
    latency_samples: int = Field(8, ge=1)
    latency_repeats: int = Field(3, ge=1)
    batch_size: int = Field(8, ge=1)


class CompressRecipe(_Strict):
    """Teacher → DONUT-hole: derive a shallower student, distill while pruning, report."""

    student: StudentConfig
    distill: DistillConfig = DistillConfig()
    prune: PruneConfig = PruneConfig()
    train: TrainConfig = TrainConfig()
    report: ReportConfig = ReportConfig()


R = TypeVar("R", bound=BaseModel)


def load_recipe(path: str | Path, kind: type[R], *, overrides: dict[str, Any] | None = None) -> R:
    """Read and validate a recipe; ``overrides`` like ``{"train.steps": 0}`` replace nested keys."""
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {file}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise RecipeError(f"{file} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise RecipeError(f"{file} must hold a mapping at the top level")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise RecipeError(f"{file}: {problems}") from exc


def save_recipe(recipe: BaseModel, path: str | Path) -> Path:
    """Write the resolved recipe (defaults filled in) beside a run's outputs."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    return out
