"""Recipes: one flat YAML per experiment, validated by pydantic and saved beside every run.

``TeacherRecipe`` drives ``donut-hole train``; ``CompressRecipe`` drives ``donut-hole compress``. Unknown
keys are errors, so a typo in a recipe fails before hours of training, not after. This module is the one
home of the configuration types (``TrainConfig``, ``CurriculumConfig`` and ``GuideConfig`` too, which the
training loop, the curriculum and the guided losses take) and imports neither torch nor the loop, so
reading and checking a recipe stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from donut_hole.documents.schemas import DOCUMENT_TYPES


class RecipeError(ValueError):
    """A recipe file is missing, not YAML, or holds a bad value; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainConfig(_Strict):
    """Optimisation settings shared by teacher training and student distillation (``train:`` in a recipe)."""

    steps: int = Field(1000, ge=0, description="Optimizer steps; 0 skips training.")
    batch_size: int = Field(8, ge=1)
    lr: float = Field(5e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final lr as a fraction of lr (cosine floor).")
    warmup_steps: int = Field(100, ge=0)
    decay_steps: int | None = Field(
        None,
        ge=1,
        description="Decay the lr only over the last N steps (warmup-stable-decay: constant lr before "
        "them); unset: over all steps after the warm-up. To anneal an open-ended run from its checkpoint: "
        "--resume with steps = its step + N and decay_steps = N, into a copy of its folder.",
    )
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    eval_every: int = Field(200, ge=1)
    eval_samples: int = Field(64, ge=1, description="Validation documents scored at each evaluation.")
    checkpoint_every: int = Field(200, ge=1)
    log_every: int = Field(10, ge=1)
    max_length: int = Field(256, ge=8, description="Longest target sequence in tokens.")
    max_new_tokens: int | None = Field(
        None, ge=1, description="Longest reading in held-out evaluations; default: the model's positions."
    )
    seed: int = 0
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (per training process).")
    processes: int = Field(
        1,
        ge=1,
        description="Data-parallel training processes on this machine's CPU cores: each takes an equal "
        "slice of every batch and gradients are averaged, so the run is the same as with one process "
        "(and may resume with another count); one process on a GPU. Each gets an equal share of the "
        "torch threads, at least one.",
    )
    device: str = Field("auto", description="auto, cpu or cuda")
    time_limit_s: float | None = Field(
        None,
        gt=0,
        description="Stop after this many seconds of training (this run), then evaluate, checkpoint and "
        "save as after the last step. The lr schedule and a pruner's then follow the steps or the "
        "elapsed fraction of this time, whichever is further along, so the run anneals (and reaches its "
        "density) in time. For a fixed budget of machine time.",
    )
    target_f1: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Stop once an evaluation's held-out field F1 reaches this (an open-ended run's goal).",
    )
    average_last: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Average the weights of the checkpoints in this last fraction of the schedule (every "
        "checkpoint_every steps, and the last step's) and end the run as their mean, evaluated beside the "
        "last step's weights (its evaluation record names the steps averaged); 0: the last step's weights.",
    )
    bf16: bool = Field(True, description="bf16 autocast when training on CUDA.")
    bf16_cpu: bool = Field(
        False,
        description="bf16 autocast when training on a CPU with AVX512-BF16 or AMX (2-2.5x faster for small "
        "DONUTs on such CPUs; ignored on CPUs without bf16 instructions).",
    )

    @model_validator(mode="after")
    def _batch_splits_over_processes(self) -> TrainConfig:
        if self.batch_size % self.processes:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of processes ({self.processes}): "
                "each process takes an equal slice of every batch"
            )
        return self


class Stage(_Strict):
    """One step of a curriculum: draw from ``mix`` (weights, normalised) until ``until`` images are seen."""

    until: int | None = Field(None, gt=0, description="Images seen when this stage ends; null: never.")
    mix: dict[str, float] = Field(description="Source → weight, e.g. {reading/easy: 1, shipping_label: 1}.")
    page_shapes: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of the document scans drawn in their own page shape (the type's page size, e.g. "
        "640x480, its short side 0.66-1.0 of the long one) and fitted to the input as a reader fits a scan "
        "(resized, then padded); the rest are drawn at the input size.",
    )

    @field_validator("mix")
    @classmethod
    def _known_sources(cls, mix: dict[str, float]) -> dict[str, float]:
        # Here, not at the top: the renderer's module pulls in the tokenizer and torch, which reading a
        # recipe does not need (only a recipe with a curriculum gets here).
        from donut_hole.documents.synth import SOURCES

        unknown = sorted(set(mix) - set(SOURCES))
        if unknown:
            raise ValueError(f"unknown source {unknown[0]!r}; choose from {', '.join(SOURCES)}")
        if not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
            raise ValueError("a mix needs at least one source with a positive weight")
        return mix


class CurriculumConfig(_Strict):
    """Training data rendered on the fly (instead of a dataset folder): ``data:`` in a teacher recipe.

    :mod:`donut_hole.compression.curriculum` renders it.
    """

    seed: int = Field(0, description="Data seed (the held-out set uses another, e.g. 1000).")
    stages: list[Stage] = Field(min_length=1)

    @field_validator("stages")
    @classmethod
    def _ordered(cls, stages: list[Stage]) -> list[Stage]:
        ends = [s.until for s in stages]
        if any(e is None for e in ends[:-1]):
            raise ValueError("only the last stage may run forever (until: null)")
        known = [e for e in ends if e is not None]
        if known != sorted(known) or len(set(known)) != len(known):
            raise ValueError("stages must end at increasing image counts")
        return stages

    def stage_at(self, images: int) -> Stage:
        """The stage in force once ``images`` images have been seen (the last one after all ends)."""
        for stage in self.stages:
            if stage.until is None or images < stage.until:
                return stage
        return self.stages[-1]

    def documents(self) -> list[str]:
        """The document kinds any stage draws (their field tags must be in the tokenizer)."""
        return sorted({s for stage in self.stages for s in stage.mix if s in DOCUMENT_TYPES})


class GuideConfig(_Strict):
    """Weights of the guided-reading terms (0 turns a term off): ``guide:`` in a teacher recipe.

    :mod:`donut_hole.compression.guided` computes them.
    """

    attention: float = Field(1.0, ge=0, description="Cross-attention on the printed character's cell.")
    glyph: float = Field(1.0, ge=0, description="Per-cell character classification on the encoder output.")
    blank_weight: float = Field(0.1, ge=0, description="Weight of cells with no character in the glyph term.")


class TeacherModel(_Strict):
    preset: Literal["tiny", "donut-base"] = "tiny"
    image_size: tuple[int, int] | None = Field(
        None,
        description="(height, width); default: the preset's. With 'init: PATH' the folder's model is "
        "fine-tuned at this input size (default: the folder's).",
    )
    corpus_vocab_size: int = Field(
        0, ge=0, description="BPE vocabulary learned on the values; 0 = characters."
    )
    overrides: dict[str, Any] = Field(default_factory=dict, description="Preset fields to change.")


class TeacherRecipe(_Strict):
    """Train a DONUT teacher from scratch (``init: preset``) or fine-tune one (``init: PATH``)."""

    init: str = Field("preset", description="'preset' to start from random weights, or a model folder.")
    task_prompt: str | None = Field(
        None,
        description="The model's decoder start token, e.g. '<s_cord-v2>'; default: the config's start id, "
        "else the tokenizer's one <s_...> task token.",
    )
    model: TeacherModel = TeacherModel()
    data: CurriculumConfig | None = Field(
        None, description="Render the training data on the fly by this curriculum (no --train folder)."
    )
    guide: GuideConfig | None = Field(
        None, description="Guided-reading losses (need rendered data: a 'data' curriculum)."
    )
    train: TrainConfig = TrainConfig()


Selection = Literal["uniform", "first", "last"]


class StudentConfig(_Strict):
    """How much of the teacher the student keeps (``student:``); :func:`.student.build_student` reads it."""

    encoder_depths: list[int] = Field(description="Swin blocks per stage in the student, e.g. [2, 2, 6, 2].")
    decoder_layers: int = Field(ge=1, description="mBART decoder layers in the student.")
    selection: Selection = Field(
        "uniform",
        description="uniform: evenly spaced teacher blocks, first and last included (one: the first); "
        "first: the first n; last: the last n (a shallow student whose output layer starts as the "
        "teacher's).",
    )
    grow_from: str | None = Field(
        None,
        description="A trained student of this teacher (a model folder) with the same encoder and as many or "
        "fewer decoder layers: this student starts as it reads. Its weights are that student's, and each "
        "decoder layer it adds after that student's last starts as the identity (copied from that last "
        "layer, with the output projections of its attentions and its FFN at zero), so training only adds "
        "to what it reads. A relative path is taken from the working directory.",
    )
    image_size: list[int] | None = Field(
        None,
        description="[height, width] of the student's input, e.g. [1280, 960] for a [2560, 1920] teacher; "
        "the teacher's when omitted. The aspect ratio must be the teacher's: the student learns from the "
        "teacher's batches resized (needs distill.hidden_encoder 0).",
    )

    @field_validator("image_size")
    @classmethod
    def _two_sides(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (len(value) != 2 or min(value) < 32):
            raise ValueError(f"image_size must be [height, width], each at least 32 pixels; got {value}")
        return value


class DistillConfig(_Strict):
    """Weights of the distillation terms (``distill:``); a term with weight 0 is not computed."""

    ce: float = Field(1.0, ge=0, description="Cross-entropy on the ground-truth tokens.")
    kd: float = Field(1.0, ge=0, description="KL between teacher and student logits at temperature T (× T²).")
    hidden_encoder: float = Field(0.0, ge=0, description="MSE between matched Swin stage outputs.")
    hidden_decoder: float = Field(0.0, ge=0, description="MSE between matched decoder layer outputs.")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of the KL term.")
    attention: float = Field(
        0.0,
        ge=0,
        description="KL between the teacher's and the student's last-layer cross-attention maps (mean over "
        "heads): where the teacher looks while it reads each token. Needs the teacher's encoder grid.",
    )


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
    task_prompt: str | None = Field(
        None,
        description="The model's decoder start token, e.g. '<s_cord-v2>'; default: the config's start id, "
        "else the tokenizer's one <s_...> task token.",
    )
    distill: DistillConfig = DistillConfig()
    prune: PruneConfig = PruneConfig()
    data: CurriculumConfig | None = Field(
        None,
        description="Render the student's training scans on the fly by this curriculum, e.g. the document "
        "types in their own page shapes (no --train folder); its document kinds must be ones the teacher "
        "reads.",
    )
    train: TrainConfig = TrainConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="after")
    def _resized_student_has_no_encoder_mse(self) -> CompressRecipe:
        if self.student.image_size is not None and self.distill.hidden_encoder > 0:
            raise ValueError(
                "student.image_size gives the student smaller feature maps than the teacher's: "
                "set distill.hidden_encoder to 0 (the logit and decoder terms still apply)"
            )
        if self.student.image_size is not None and self.distill.attention > 0:
            raise ValueError(
                "student.image_size gives the student another encoder grid than the teacher's, so their "
                "cross-attention maps do not compare: set distill.attention to 0"
            )
        return self

    @model_validator(mode="after")
    def _vocabulary_from_a_folder(self) -> CompressRecipe:
        if self.data is not None and self.prune.vocabulary:
            raise ValueError(
                "prune.vocabulary keeps the tokens a training folder's targets use: it needs --train, "
                "not a 'data' curriculum"
            )
        return self


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
