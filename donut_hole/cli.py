"""The ``donut-hole`` command: a thin shell over the package's plain functions.

Heavy imports (torch, transformers) happen inside the commands so that ``--help`` stays instant.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="donut-hole",
    help="DONUT-hole: compress DONUT document readers and run them over queues of logistics scans.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Output folder (DONUT dataset format).")],
    kind: Annotated[
        list[str] | None,
        typer.Option(
            help="Document type, or reading/easy, reading/medium, reading/document for reading pages "
            "(text in reading order); repeat for a mix, or 'all' (the three document types)."
        ),
    ] = None,
    n: Annotated[int, typer.Option(min=1, help="Number of scans.")] = 100,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same bytes.")] = 0,
    width: Annotated[int | None, typer.Option(help="Image width (default per document type).")] = None,
    height: Annotated[int | None, typer.Option(help="Image height (default per document type).")] = None,
    workers: Annotated[
        int, typer.Option(min=0, help="Processes (0: one per core); the bytes are the same for any number.")
    ] = 0,
) -> None:
    """Generate synthetic logistics scans with ground truth (images + metadata.jsonl)."""
    from donut_hole.documents.schemas import DOCUMENT_TYPES
    from donut_hole.documents.synth import SOURCES, generate

    kind = kind or ["shipping_label"]
    kinds = sorted(DOCUMENT_TYPES) if kind == ["all"] else kind
    unknown = [k for k in kinds if k not in SOURCES]
    if unknown:
        raise _fail(f"unknown document type {unknown[0]!r}; choose from {', '.join(SOURCES)}")
    size = (width, height) if width and height else None
    generate(kinds, n=n, out=out, seed=seed, image_size=size, workers=workers)
    console.print(f"wrote {n} scans ({', '.join(kinds)}) to {out}")


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option(help="Model folder (save_pretrained layout).")],
    data: Annotated[Path, typer.Option(help="DONUT dataset folder with metadata.jsonl.")],
    out: Annotated[Path | None, typer.Option(help="Where to write the JSON report.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N samples.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 256,
) -> None:
    """Score a model on a dataset: field F1, nTED accuracy and per-field exact match."""
    from donut_hole.dataset import DatasetError, read_dataset
    from donut_hole.evaluate import evaluate_reader
    from donut_hole.model.build import ModelLoadError
    from donut_hole.model.predict import DonutReader

    try:
        samples = read_dataset(data, limit=limit)
        reader = DonutReader.from_path(model, max_new_tokens=max_new_tokens)
    except (DatasetError, ModelLoadError) as exc:
        raise _fail(str(exc)) from exc
    evaluation = evaluate_reader(reader, samples, batch_size=batch_size)
    result = evaluation.result
    table = Table(title=f"{model} on {data} ({result.n} documents)")
    table.add_column("field")
    table.add_column("exact match", justify="right")
    for name, score in result.field_exact_match.items():
        table.add_row(name, f"{score:.3f}")
    console.print(table)
    errors = sum(1 for r in evaluation.records if r["error"])
    console.print(
        f"field F1 [bold]{result.f1:.4f}[/]  nTED accuracy [bold]{result.ted_accuracy:.4f}[/]  "
        f"unreadable {errors}  {evaluation.docs_per_s:.2f} docs/s"
    )
    path = evaluation.write_json(out or Path(model) / "evaluation.json")
    console.print(f"wrote {path}")


@app.command()
def predict(
    model: Annotated[Path, typer.Option(help="Model folder.")],
    images: Annotated[list[Path], typer.Argument(help="Scans to read.")],
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 256,
) -> None:
    """Read scans and print one JSON line per image ({"file", "fields", "confidence"} or {"error"})."""
    from donut_hole.model.build import ModelLoadError
    from donut_hole.model.predict import DocumentError, DonutReader

    try:
        reader = DonutReader.from_path(model, max_new_tokens=max_new_tokens)
    except ModelLoadError as exc:
        raise _fail(str(exc)) from exc
    failed = 0
    for path in images:
        try:
            pred = reader.predict_detailed([path], batch_size=batch_size)[0]
            line = {"file": str(path), "fields": pred.data, "confidence": round(pred.confidence, 4)}
        except DocumentError as exc:
            failed += 1
            line = {"file": str(path), "error": exc.reason}
        typer.echo(json.dumps(line, ensure_ascii=False))
    if failed:
        raise typer.Exit(1)


def _overrides(steps: int | None, device: str | None, settings: list[str] | None = None) -> dict[str, object]:
    """Recipe overrides from --steps, --device and repeated ``--set key.path=value`` (YAML values)."""
    import yaml

    out: dict[str, object] = {}
    for item in settings or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise _fail(f"--set expects KEY=VALUE (e.g. train.batch_size=16), got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise _fail(f"--set {key.strip()}: {raw!r} is not a YAML value ({exc})") from exc
    if steps is not None:
        out["train.steps"] = steps
    if device is not None:
        out["train.device"] = device
    return out


@app.command()
def train(
    recipe: Annotated[Path, typer.Option(help="Teacher recipe YAML (e.g. configs/teacher-small.yaml).")],
    val_data: Annotated[Path, typer.Option("--val", help="Validation dataset folder.")],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoint, history, model/.")],
    train_data: Annotated[
        Path | None,
        typer.Option(
            "--train", help="Training dataset folder (not needed when the recipe renders its data)."
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(min=0, help="Override train.steps.")] = None,
    device: Annotated[str | None, typer.Option(help="Override train.device (auto, cpu, cuda).")] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override any recipe key, repeatable: --set train.batch_size=16."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt if present.")] = False,
) -> None:
    """Train (from a preset) or fine-tune (from a model folder) a DONUT teacher."""
    from donut_hole.compression.recipe import RecipeError, TeacherRecipe, load_recipe
    from donut_hole.compression.teacher import RecipeDataError, train_teacher
    from donut_hole.compression.train import CheckpointError
    from donut_hole.dataset import DatasetError
    from donut_hole.model.build import ModelLoadError

    try:
        spec = load_recipe(recipe, TeacherRecipe, overrides=_overrides(steps, device, settings))
        history = train_teacher(spec, train_dir=train_data, val_dir=val_data, out_dir=out, resume=resume)
    except (RecipeError, RecipeDataError, DatasetError, ModelLoadError, CheckpointError) as exc:
        raise _fail(str(exc)) from exc
    last = history[-1] if history else {}
    console.print(
        f"saved {out / 'model'}  step {last.get('step', 0)}  "
        f"F1 {last.get('f1', float('nan')):.4f}  nTED acc {last.get('ted_accuracy', float('nan')):.4f}"
    )


@app.command()
def compress(
    teacher: Annotated[Path, typer.Option(help="Teacher model folder (any DONUT checkpoint).")],
    recipe: Annotated[Path, typer.Option(help="Compression recipe YAML (e.g. configs/tiny.yaml).")],
    val_data: Annotated[Path, typer.Option("--val", help="Validation dataset folder.")],
    out: Annotated[Path, typer.Option(help="Run folder: model/, report.json, report.md, plots.")],
    train_data: Annotated[
        Path | None, typer.Option("--train", help="Training dataset folder (needed when steps > 0).")
    ] = None,
    steps: Annotated[int | None, typer.Option(min=0, help="Override train.steps (0: no training).")] = None,
    device: Annotated[str | None, typer.Option(help="Override train.device (auto, cpu, cuda).")] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override any recipe key, repeatable: --set train.batch_size=16."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt if present.")] = False,
) -> None:
    """Build the DONUT-hole student of a teacher: derive, distill, prune, save, report."""
    from donut_hole.compression.compress import compress as run_compress
    from donut_hole.compression.recipe import CompressRecipe, RecipeError, load_recipe
    from donut_hole.compression.student import StudentError
    from donut_hole.dataset import DatasetError
    from donut_hole.model.build import ModelLoadError

    try:
        spec = load_recipe(recipe, CompressRecipe, overrides=_overrides(steps, device, settings))
        report = run_compress(
            spec,
            teacher_path=teacher,
            train_dir=train_data,
            val_dir=val_data,
            out_dir=out,
            name=recipe.stem,
            resume=resume,
        )
    except (RecipeError, DatasetError, ModelLoadError, StudentError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    t, s = report["teacher"], report["student"]
    console.print((out / "report.md").read_text(encoding="utf-8").split("\n\n**Global CKA**")[0])
    console.print(
        f"\nstudent density {s['density']['prunable_density_vs_teacher']:.4f} of the teacher's prunable "
        "weights "
        f"(target {report['target_density']}), global CKA {report['cka']['global']:.4f}, "
        f"F1 {t['eval']['f1']:.4f} → {s['eval']['f1']:.4f}\nwrote {out / 'report.md'} and {out / 'model'}"
    )


@app.command()
def ship(
    run: Annotated[Path, typer.Option(help="Finished run folder of scripts/train_default_model.sh.")],
    models: Annotated[Path, typer.Option(help="Where the model folders go.")] = Path("models"),
    readme: Annotated[
        Path | None, typer.Option(help="README whose default-models markers get the teacher/student table.")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Ship even when targets are not met (the card says so).")
    ] = False,
) -> None:
    """Copy a trained teacher and its student into models/ with model cards (checks issue 5's targets)."""
    from donut_hole.model.card import ShipError
    from donut_hole.model.card import ship as ship_models

    try:
        done = ship_models(run, models, readme=readme, force=force)
    except ShipError as exc:
        raise _fail(str(exc), code=1) from exc
    for target in done["targets"]:
        mark = "[green]met[/]" if target.met else "[bold red]not met[/]"
        value = "–" if target.value is None else f"{target.value:.4f}"
        console.print(f"{target.name}: {value} (limit {target.limit:g}) {mark}")
    for side, folder in done["models"].items():
        console.print(f"shipped {side}: {folder}")
    if readme is not None and not done["readme_updated"]:
        console.print(f"[yellow]{readme} has no default-models markers: table not written[/]")


from donut_hole import cli_pipeline  # noqa: E402, F401  (registers the pipeline commands)

if __name__ == "__main__":
    # `python -m donut_hole.cli`: this file runs as __main__, while cli_pipeline registered its commands on
    # the app of the imported donut_hole.cli; run that one (`python -m donut_hole` is the usual spelling).
    from donut_hole.cli import app as _imported_app

    _imported_app(prog_name="donut-hole")
