"""Offline commands: ``train`` a teacher and ``compress`` it into its DONUT-hole student."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from donut_hole.cli.common import console, fail

Device = Annotated[str | None, typer.Option(help="Override train.device (auto, cpu, cuda).")]
RecipeSettings = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override any recipe key, repeatable: --set train.batch_size=16."),
]
Resume = Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt if present.")]
TaskPrompt = Annotated[
    str | None,
    typer.Option(help="The teacher's decoder start token, e.g. '<s_cord-v2>' (recipe key task_prompt)."),
]


def _overrides(
    steps: int | None,
    device: str | None,
    settings: list[str] | None = None,
    task_prompt: str | None = None,
) -> dict[str, object]:
    """Recipe overrides from --steps, --device, --task-prompt and repeated ``--set key.path=value``."""
    import yaml

    out: dict[str, object] = {}
    for item in settings or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise fail(f"--set expects KEY=VALUE (e.g. train.batch_size=16), got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise fail(f"--set {key.strip()}: {raw!r} is not a YAML value ({exc})") from exc
    if steps is not None:
        out["train.steps"] = steps
    if device is not None:
        out["train.device"] = device
    if task_prompt is not None:
        out["task_prompt"] = task_prompt
    return out


def train(
    recipe: Annotated[Path, typer.Option(help="Teacher recipe YAML (e.g. configs/teacher-cpu.yaml).")],
    val_data: Annotated[Path, typer.Option("--val", help="Validation dataset folder.")],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoint, history, model/.")],
    train_data: Annotated[
        Path | None,
        typer.Option(
            "--train", help="Training dataset folder (not needed when the recipe renders its data)."
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(min=0, help="Override train.steps.")] = None,
    device: Device = None,
    settings: RecipeSettings = None,
    resume: Resume = False,
    task_prompt: TaskPrompt = None,
) -> None:
    """Train (from a preset) or fine-tune (from a model folder) a DONUT teacher."""
    from donut_hole.compression.checkpoint import CheckpointError
    from donut_hole.compression.parallel import ParallelError
    from donut_hole.compression.recipe import RecipeError, TeacherRecipe, load_recipe
    from donut_hole.compression.teacher import RecipeDataError, train_teacher
    from donut_hole.evaluation.dataset import DatasetError
    from donut_hole.model.build import ModelLoadError

    errors = (RecipeError, RecipeDataError, DatasetError, ModelLoadError, CheckpointError, ParallelError)
    try:
        spec = load_recipe(recipe, TeacherRecipe, overrides=_overrides(steps, device, settings, task_prompt))
        history = train_teacher(spec, train_dir=train_data, val_dir=val_data, out_dir=out, resume=resume)
    except errors as exc:
        raise fail(str(exc)) from exc
    last = history[-1] if history else {}
    console.print(
        f"saved {out / 'model'}  step {last.get('step', 0)}  "
        f"F1 {last.get('f1', float('nan')):.4f}  nTED acc {last.get('ted_accuracy', float('nan')):.4f}"
    )


def compress(
    teacher: Annotated[Path, typer.Option(help="Teacher model folder (any DONUT checkpoint).")],
    recipe: Annotated[Path, typer.Option(help="Compression recipe YAML (e.g. configs/tiny.yaml).")],
    val_data: Annotated[Path, typer.Option("--val", help="Validation dataset folder.")],
    out: Annotated[Path, typer.Option(help="Run folder: model/, report.json, report.md, plots.")],
    train_data: Annotated[
        Path | None,
        typer.Option(
            "--train",
            help="Training dataset folder (needed when steps > 0, unless the recipe renders it: 'data').",
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(min=0, help="Override train.steps (0: no training).")] = None,
    device: Device = None,
    settings: RecipeSettings = None,
    resume: Resume = False,
    task_prompt: TaskPrompt = None,
) -> None:
    """Build the DONUT-hole student of a teacher: derive, distill, prune, save, report."""
    from donut_hole.compression.compress import compress as run_compress
    from donut_hole.compression.parallel import ParallelError
    from donut_hole.compression.recipe import CompressRecipe, RecipeError, load_recipe
    from donut_hole.compression.student import StudentError
    from donut_hole.evaluation.dataset import DatasetError
    from donut_hole.model.build import ModelLoadError

    try:
        spec = load_recipe(recipe, CompressRecipe, overrides=_overrides(steps, device, settings, task_prompt))
        report = run_compress(
            spec,
            teacher_path=teacher,
            train_dir=train_data,
            val_dir=val_data,
            out_dir=out,
            name=recipe.stem,
            resume=resume,
        )
    except (RecipeError, DatasetError, ModelLoadError, StudentError, ValueError, ParallelError) as exc:
        raise fail(str(exc)) from exc
    console.print(report.comparison())
    console.print(f"\n{report.summary()}\nwrote {out / 'report.md'} and {out / 'model'}")


def train_default(
    run: Annotated[
        Path, typer.Argument(help="Run folder: teacher/, anneal/, student/, the held-out sets.")
    ] = Path("runs/default"),
    n_train: Annotated[
        int,
        typer.Option(min=1, help="Scans of a training folder, for recipes that do not render their data."),
    ] = 12000,
    save: Annotated[
        bool,
        typer.Option(
            "--save",
            help="Keep the run in checkpoints/ (curves, logs, run.json, a finished student's model; the "
            "resumable checkpoint.pt beside them, never committed) and stop.",
        ),
    ] = False,
    anneal: Annotated[
        int | None,
        typer.Option(
            min=1, help="Only anneal a copy of the teacher's newest checkpoint over N steps, evaluate it."
        ),
    ] = None,
    teacher_recipe: Annotated[Path, typer.Option(help="Teacher recipe.")] = Path("configs/teacher-cpu.yaml"),
    student_recipe: Annotated[Path, typer.Option(help="Student recipe.")] = Path(
        "configs/donut-hole-cpu.yaml"
    ),
    keep: Annotated[Path, typer.Option(help="Where the teacher's run is kept.")] = Path(
        "checkpoints/teacher-cpu"
    ),
    student_keep: Annotated[
        Path | None, typer.Option(help="Where a distillation is kept; default: checkpoints/<student recipe>.")
    ] = None,
    n_val: Annotated[int, typer.Option(min=1, help="Held-out scans (seed 1000).")] = 500,
    from_scratch: Annotated[
        bool,
        typer.Option("--from-scratch", help="Ignore the committed checkpoints (about 10 hours on 2 cores)."),
    ] = False,
    smoke: Annotated[
        bool, typer.Option("--smoke", help="A few steps of every phase, to check the chain.")
    ] = False,
    teacher_only: Annotated[bool, typer.Option("--teacher-only", help="Stop after the teacher.")] = False,
    student_only: Annotated[
        bool,
        typer.Option("--student-only", help="Distil from the run's (or the committed annealed) teacher."),
    ] = False,
    init: Annotated[
        str | None, typer.Option(help="Start the teacher from this model folder (a new batch order).")
    ] = None,
    teacher_seconds: Annotated[
        float | None, typer.Option(min=1, help="Train the teacher this long (schedules follow the time).")
    ] = None,
    student_seconds: Annotated[
        float | None, typer.Option(min=1, help="Distil the student this long (schedules follow the time).")
    ] = None,
    anneal_steps: Annotated[
        int | None,
        typer.Option(
            min=0, help="Steps of the teacher's anneal; default 1000 for a rendering recipe, else 0."
        ),
    ] = None,
    anneal_size: Annotated[
        int | None,
        typer.Option(
            min=0, help="Input size of the anneal; default 672 for a rendering recipe, 0: the recipe's."
        ),
    ] = None,
) -> None:
    """Train the default models, resumably: teacher → anneal → DONUT-hole student → evaluation.

    Stop it any time (SIGTERM or Ctrl-C: each phase checkpoints first); the same command goes on. A run
    goes on from the committed checkpoints (checkpoints/teacher-cpu, checkpoints/<student recipe>) when it
    has none of its own. `donut-hole ship --run RUN` ships the result.
    """
    from donut_hole.compression.chain import Chain, ChainError

    size: int | None = -1 if anneal_size is None else (anneal_size or None)
    chain = Chain(
        run=run,
        n_train=n_train,
        teacher_recipe=teacher_recipe,
        student_recipe=student_recipe,
        keep=keep,
        student_keep=student_keep,
        n_val=n_val,
        from_scratch=from_scratch,
        smoke=smoke,
        teacher_only=teacher_only,
        student_only=student_only,
        init=init,
        teacher_seconds=teacher_seconds,
        student_seconds=student_seconds,
        anneal_steps=anneal_steps,
        anneal_size=size,
        invocation=" ".join(["donut-hole train-default", *sys.argv[2:]]),
    )
    try:
        if save:
            for folder in chain.save():
                console.print(
                    f"kept the run in {folder} (commit all but checkpoint.pt; the next run goes on from it)"
                )
        elif anneal is not None:
            chain.anneal_only(anneal)
        else:
            chain.train()
    except (ChainError, FileNotFoundError) as exc:
        raise fail(str(exc)) from exc
