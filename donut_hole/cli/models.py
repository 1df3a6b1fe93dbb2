"""Commands that use a DONUT model: ``evaluate`` and ``predict`` a folder, ``ship`` trained models."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

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
    boxes: Annotated[
        bool,
        typer.Option(
            "--boxes",
            help="Also print where each field was read: field_boxes, [x0, y0, x1, y1] in the page's pixels.",
        ),
    ] = False,
) -> None:
    """Read scans and print one JSON line per page: its fields and confidence, or its error.

    Each line is {"file", "page", "fields", "confidence", "field_confidence"} (each field's confidence,
    shaped like the flattened fields: calibrated where the model folder has calibration.json), with
    "field_boxes" with --boxes, and "note" when the reading was cut at the longest answer the model can
    write; or {"file", "error"} (with "page" when one page failed).

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
    reader.locate = boxes
    pending: list[tuple[dict[str, object], Image.Image]] = []

    def read_pending() -> None:
        predictions = reader.predict_detailed([image for _, image in pending], batch_size=batch_size)
        for (line, image), pred in zip(pending, predictions, strict=True):
            line.update(fields=pred.data, confidence=round(pred.confidence, 4))
            line.update(_field_details(reader, pred, image, boxes=boxes))
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


def _field_details(reader: Any, prediction: Any, image: Any, *, boxes: bool) -> dict[str, object]:
    """``field_confidence`` (and ``field_boxes`` in the page's pixels) of one reading, keyed by the
    flattened key paths (a repeated path: a list)."""
    from donut_hole.db.repository import grouped
    from donut_hole.model.locate import input_geometry
    from donut_hole.model.readings import field_readings

    geometry = input_geometry(reader.processor.image_processor, image.size) if boxes else None
    readings = field_readings(
        prediction, reader.processor.tokenizer, calibration=reader.calibration, geometry=geometry,
        stride=reader.stride,
    )  # fmt: skip
    out: dict[str, object] = {
        "field_confidence": grouped([(r.name, round(r.confidence, 4)) for r in readings])
    }
    if boxes:
        from donut_hole.scans import page_size

        width, height = page_size(image)
        pixels = [
            (r.name, None if r.box is None else [round(r.box[0] * width), round(r.box[1] * height),
                                                 round(r.box[2] * width), round(r.box[3] * height)])
            for r in readings
        ]  # fmt: skip
        out["field_boxes"] = grouped(pixels)
    return out


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


def calibrate(
    data: Annotated[
        Path, typer.Option(help="Held-out DONUT dataset (not trained on) to fit the calibration on.")
    ],
    model: ModelOption = None,
    check: Annotated[
        Path | None,
        typer.Option(
            help="Another held-out dataset to measure the calibration on (the model card's figures)."
        ),
    ] = None,
    real: Annotated[
        Path | None,
        typer.Option(
            help="Real photos of shipping labels (DONUT dataset whose truth names the tracking number), "
            "measured with --check; never fitted on."
        ),
    ] = None,
    unfit: Annotated[
        int,
        typer.Option(
            min=0,
            help="Pages of each kind no schema fits (reading pages, blank pages, turned pages) added to "
            "both sets.",
        ),
    ] = 20,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only the first N samples of each dataset.")
    ] = None,
    budget: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Share of right documents the reported threshold may send."),
    ] = 0.10,
    seed: Annotated[int, typer.Option(help="Seed of the unfit pages.")] = 0,
) -> None:
    """Fit the model's field-confidence calibration on held-out scans and write it into the model folder.

    Every page is read once; a field is right when its (key path, value) is in the page's truth. The fit
    (a logistic model of token-probability features) goes to MODEL/calibration.json, which every reader of
    the folder applies. With --check the folder also gets calibration-report.json, reliability.png and a
    section in its model card: expected calibration error before and after, and the review curve.
    """
    from donut_hole.evaluation import review
    from donut_hole.evaluation.dataset import DatasetError, read_dataset
    from donut_hole.model.build import ModelLoadError
    from donut_hole.model.predict import DonutReader

    model = _model_folder(model)
    try:
        fit_samples = read_dataset(data, limit=limit)
        check_samples = read_dataset(check, limit=limit) if check is not None else []
        real_samples = read_dataset(real) if real is not None else []
        reader = DonutReader.from_path(model)
    except (DatasetError, ModelLoadError) as exc:
        raise fail(str(exc)) from exc
    reader.calibration = None  # read raw: the fit and the "before" figures need the token probabilities

    def pages_of(samples: list[Any], unfit_seed: int) -> list[review.Page]:
        pages = [review.Page(s.image_path, s.gt_parse, "scan") for s in samples]
        return pages + review.out_of_distribution(samples, seed=unfit_seed, n=unfit) if unfit else pages

    console.print(f"reading {len(fit_samples)} + {3 * unfit} pages to fit on")
    fitted = review.read_pages(reader, pages_of(fit_samples, seed))
    calibration = review.fit(fitted)
    path = calibration.save(model)
    console.print(f"wrote {path} ({calibration.fitted_on['fields']} fields)")
    if not check_samples:
        return
    pages = pages_of(check_samples, seed + 1) + [
        review.Page(s.image_path, review.real_truth(s.gt_parse), "real photo") for s in real_samples
    ]
    console.print(f"reading {len(pages)} pages to measure it on")
    result = review.report(fitted, review.read_pages(reader, pages), calibration, budget=budget)
    (model / "calibration-report.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    review.plot_reliability(result, model / "reliability.png")
    command = f"donut-hole calibrate --model {model} --data {data} --check {check}" + (
        f" --real {real}" if real else ""
    )
    section = review.markdown(result, command=command)
    _put_card_section(model / "README.md", "## Confidence and review", section)
    after = result["after"]
    console.print(
        f"ECE {result['ece_before']:.3f} → {result['ece_after']:.3f}; at threshold {after['threshold']:.3f} "
        f"{after['wrong_to_review']:.1%} of wrong documents and {after['right_to_review']:.1%} of right ones "
        "go to review"
    )


CARD_START, CARD_END = "<!-- calibration:start -->", "<!-- calibration:end -->"


def _put_card_section(card: Path, heading: str, body: str) -> None:
    """Write ``body`` under ``heading`` between the calibration markers of a model card (added at its end
    the first time)."""
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    block = f"{CARD_START}\n{heading}\n\n{body}\n\n![reliability](reliability.png)\n{CARD_END}"
    if CARD_START in text and CARD_END in text:
        head, rest = text.split(CARD_START, 1)
        text = head + block + rest.split(CARD_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    card.write_text(text, encoding="utf-8")


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
