"""Commands that use a DONUT model: ``evaluate`` and ``predict`` a folder, ``ship`` trained models."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from donut_hole.cli.common import console, fail, load_settings

TaskPrompt = Annotated[
    str | None,
    typer.Option(
        help="Decoder start token, e.g. '<s_cord-v2>' (default: the config's start id, else the tokenizer's "
        "one <s_...> task token)."
    ),
]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
Precision = Annotated[
    str,
    typer.Option(
        help="fp32; bf16 (GPUs, CPUs with AVX512-BF16/AMX); int8 (dynamic quantisation, CPU). See README."
    ),
]


ModelOption = Annotated[
    Path | None,
    typer.Option(
        help="Model folder (save_pretrained layout); default: DONUT_HOLE_MODEL_PATH, the shipped "
        "DONUT-hole student."
    ),
]


def evaluate(
    data: Annotated[Path, typer.Option(help="DONUT dataset folder with metadata.jsonl.")],
    model: ModelOption = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Write the JSON report (scores and every document's prediction) here."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N samples.")] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(min=1, help="Longest answer in tokens (default: the model's positions)."),
    ] = None,
    task_prompt: TaskPrompt = None,
    device: Device = "auto",
    precision: Precision = "fp32",
) -> None:
    """Score a model on a dataset: field F1, nTED accuracy and per-field exact match."""
    from donut_hole.evaluation.dataset import DatasetError, read_dataset
    from donut_hole.evaluation.evaluate import evaluate_reader
    from donut_hole.model.build import ModelLoadError
    from donut_hole.model.predict import DonutReader

    if out is not None:  # checked before minutes of reading, not after them
        _check_out_file(out)
    model = _model_folder(model)
    try:
        samples = read_dataset(data, limit=limit)
        reader = DonutReader.from_path(
            model, device=device, precision=precision, task_prompt=task_prompt, max_new_tokens=max_new_tokens
        )
    except (DatasetError, ModelLoadError) as exc:
        raise fail(str(exc)) from exc
    evaluation = evaluate_reader(reader, samples, batch_size=batch_size)
    result = evaluation.result
    table = Table(title=f"{model} on {data} ({result.n} documents)")
    table.add_column("field")
    table.add_column("exact match", justify="right")
    for name, score in result.field_exact_match.items():
        table.add_row(name, f"{score:.3f}")
    console.print(table)
    by_type = evaluation.by_type()
    if len(by_type) > 1:
        kinds = Table(title="by document type")
        for column in ("document type", "documents", "field F1", "nTED accuracy"):
            kinds.add_column(column, justify="left" if column == "document type" else "right")
        for kind, scores in by_type.items():
            kinds.add_row(kind, str(scores.n), f"{scores.f1:.4f}", f"{scores.ted_accuracy:.4f}")
        console.print(kinds)
    errors = sum(1 for r in evaluation.records if r["error"])
    console.print(
        f"field F1 [bold]{result.f1:.4f}[/]  nTED accuracy [bold]{result.ted_accuracy:.4f}[/]  "
        f"unreadable {errors}  {evaluation.docs_per_s:.2f} docs/s"
    )
    if out is not None:  # never into the model folder unasked: it may be a published or shipped model
        console.print(f"wrote {evaluation.write_json(out)}")


def predict(
    images: Annotated[
        list[Path], typer.Argument(help="Scans to read: images, PDFs, TIFFs or folders of them.")
    ],
    model: ModelOption = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 8,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(min=1, help="Longest answer in tokens (default: the model's positions)."),
    ] = None,
    task_prompt: TaskPrompt = None,
    device: Device = "auto",
    precision: Precision = "fp32",
) -> None:
    """Read scans and print one JSON line per page: its fields and confidence, or its error.

    Each line is {"file", "page", "fields", "confidence"}, with "note" when the reading was cut at the
    longest answer the model can write; or {"file", "error"} (with "page" when one page failed).

    A single image is page 1; a PDF or multi-page TIFF gives one line per page. Pages are decoded one by
    one (an unreadable one gets its error line) and read ``--batch-size`` at a time in one batched
    generation, pages of different files together.
    """
    from PIL import Image

    from donut_hole.model.build import ModelLoadError
    from donut_hole.model.predict import DonutReader
    from donut_hole.scans import DocumentError, inspect_source, read_source

    images = _scan_paths(images)  # every path checked before the model loads
    model = _model_folder(model)
    try:
        reader = DonutReader.from_path(
            model, device=device, precision=precision, task_prompt=task_prompt, max_new_tokens=max_new_tokens
        )
    except ModelLoadError as exc:
        raise fail(str(exc)) from exc
    pending: list[tuple[dict[str, object], Image.Image]] = []

    def read_pending() -> None:
        predictions = reader.predict_detailed([image for _, image in pending], batch_size=batch_size)
        for (line, _), pred in zip(pending, predictions, strict=True):
            line.update(fields=pred.data, confidence=round(pred.confidence, 4))
            if pred.note:
                line["note"] = pred.note
            typer.echo(json.dumps(line, ensure_ascii=False))
        pending.clear()

    def print_error(line: dict[str, object]) -> None:
        read_pending()  # the lines stay in the order of the files and pages
        typer.echo(json.dumps(line, ensure_ascii=False))

    failed = 0
    for path in images:
        try:
            data = read_source(path)
            pages = inspect_source(data).page_count
        except DocumentError as exc:
            failed += 1
            print_error({"file": str(path), "error": exc.reason})
            continue
        for page in range(1, pages + 1):
            try:
                pending.append(({"file": str(path), "page": page}, reader.load_page(data, page=page)))
            except DocumentError as exc:
                failed += 1
                print_error({"file": str(path), "page": page, "error": exc.reason})
            if len(pending) == batch_size:
                read_pending()
    read_pending()
    if failed:  # the rest was read and printed; the exit says that not everything was
        raise typer.Exit(2)


def _model_folder(model: Path | None) -> Path:
    """The ``--model`` folder, else the configured one (``DONUT_HOLE_MODEL_PATH``: the shipped student)."""
    return model if model is not None else load_settings().model_path


def _scan_paths(paths: list[Path]) -> list[Path]:
    """The files to read: each path a file, a folder read as its scans (images and PDFs, by name); a path
    that does not exist, is not a file or folder, or a folder without scans: one line and exit 2."""
    from donut_hole.worker.process import is_image_uri

    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and is_image_uri(p.name))
            if not found:
                raise fail(f"{path} holds no scans (images or PDFs by their suffix)")
            files.extend(found)
        elif not path.exists():
            raise fail(f"{path} does not exist")
        elif not path.is_file():
            raise fail(f"{path} is not a file")
        else:
            files.append(path)
    return files


def _check_out_file(out: Path) -> None:
    """``--out`` names a file that can be written: not a folder; its folder exists or can be made."""
    if out.is_dir():
        raise fail(f"--out {out} is a folder: name a file, e.g. {out / 'evaluation.json'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(f"--out {out}: cannot make its folder ({exc.strerror or type(exc).__name__})") from exc
    if not os.access(out.parent, os.W_OK):
        raise fail(f"--out {out}: its folder is not writable")


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
    """Copy a trained teacher and its student into models/ with model cards (checks their targets)."""
    from donut_hole.model.card import ShipError
    from donut_hole.model.card import ship as ship_models

    try:
        done = ship_models(run, models, readme=readme, force=force)
    except ShipError as exc:
        raise fail(str(exc), code=1) from exc
    for target in done["targets"]:
        mark = "[green]met[/]" if target.met else "[bold red]not met[/]"
        value = "–" if target.value is None else f"{target.value:.4f}"
        console.print(f"{target.name}: {value} (limit {target.limit:g}) {mark}")
    for side, folder in done["models"].items():
        console.print(f"shipped {side}: {folder}")
    if readme is not None and not done["readme_updated"]:
        console.print(f"[yellow]{readme} has no default-models markers: table not written[/]")
