"""Commands of the document pipeline: ``worker``, ``enqueue``, ``results``, ``batches``, ``migrate``, ``api``.

Each is a thin shell over :mod:`donut_hole.worker.enqueue`, :mod:`donut_hole.db` and the Celery and FastAPI
apps.
"""

from __future__ import annotations

import csv
import enum
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from donut_hole.cli.common import console, database_problem, err_console, fail, load_settings


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


def worker(
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Pool processes (default: one per core).")
    ] = None,
    queues: Annotated[
        str | None, typer.Option(help="Comma-separated queues to consume (default: DONUT_HOLE_QUEUE).")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Prometheus /metrics port (default: DONUT_HOLE_METRICS_PORT)."),
    ] = None,
    loglevel: Annotated[
        str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR (default: DONUT_HOLE_LOG_LEVEL).")
    ] = None,
    task_prompt: Annotated[
        str | None, typer.Option(help="Decoder start token, e.g. '<s_cord-v2>' (DONUT_HOLE_TASK_PROMPT).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda (DONUT_HOLE_DEVICE).")] = None,
    precision: Annotated[
        str | None, typer.Option(help="fp32, bf16 or int8 (DONUT_HOLE_PRECISION); see the README.")
    ] = None,
) -> None:
    """Run a Celery worker: one model per pool process, one group of documents per forward pass.

    The model is loaded and checked first: a folder that cannot be read stops the worker with its reason
    (exit 2) before it takes any message.
    """
    settings = load_settings()
    update = {"task_prompt": task_prompt, "device": device, "precision": precision}
    update = {k: v for k, v in update.items() if v is not None}
    if update:
        from donut_hole.settings import Settings

        try:
            settings = Settings.model_validate({**settings.model_dump(), **update})
        except ValueError as exc:
            raise fail(f"invalid worker option: {exc}") from exc
    if settings.storage_url.startswith("s3://"):
        from donut_hole.storage import CREDENTIALS_HELP, s3_credentials_missing

        if s3_credentials_missing():
            raise fail(
                f"the object store is {settings.storage_url} but no AWS credentials were found: "
                f"{CREDENTIALS_HELP}; a worker without them could read no scan"
            )
    info = check_model(settings)  # after the cheap checks: loading a model takes a while
    metrics_port = metrics_port or settings.metrics_port
    if metrics_port:
        # Before prometheus_client is imported: the pool processes then write their samples to files.
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="donut-hole-metrics-"))
    import donut_hole.worker.app  # noqa: F401  # a worker's hooks: cores per process, model preload, JSON logs
    from donut_hole.model.build import density_of
    from donut_hole.queue import make_celery
    from donut_hole.worker.metrics import set_model_info, start_metrics_server
    from donut_hole.worker.ready import ready_file, watch

    celery = make_celery(settings)
    watch(ready_file(), info)
    if metrics_port:
        set_model_info(
            name=Path(settings.model_path).resolve().name,
            density=density_of(settings.model_path),
            precision=info["precision"],
            device=info["device"],
        )
        start_metrics_server(metrics_port)
    argv = [
        "worker",
        "--queues",
        queues or settings.queue,
        "--loglevel",
        (loglevel or settings.log_level).upper(),
    ]
    argv += ["--prefetch-multiplier", "1", "--without-gossip", "--without-mingle"]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    celery.worker_main(argv)


def check_model(settings: Any) -> dict[str, str]:
    """Load the configured model once, run it on a blank page and free it; a failure ends the command.

    Returns what was loaded (path, task prompt, precision, device) for the readiness file. One torch
    thread: this process forks the pool next, and an OpenMP thread pool does not survive a fork."""
    import torch

    from donut_hole.model.build import ModelLoadError
    from donut_hole.worker.runtime import load_reader

    torch.set_num_threads(1)
    try:
        reader = load_reader(settings)
        from PIL import Image

        height, width = reader.image_size
        reader.max_new_tokens = 2
        reader.predict([Image.new("RGB", (width, height), "white")], batch_size=1)
    except ModelLoadError as exc:
        raise fail(f"the worker's model cannot be used: {exc}") from exc
    except Exception as exc:  # a model that loads but cannot run (shape mismatch, dtype)
        from donut_hole.model.build import one_line

        raise fail(
            f"the worker's model {settings.model_path} fails on a blank page: {one_line(exc)}"
        ) from exc
    info = {
        "model_path": str(settings.model_path),
        "task_prompt": reader.task_token,
        "precision": reader.precision,
        "device": str(reader.device),
    }
    err_console.print(f"model ok: {json.dumps(info)}")
    return info


def _is_prefix(target: str) -> bool:
    return target.startswith("s3://") and (target.endswith("/") or "/" not in target[len("s3://") :])


def _local_files(targets: list[str]) -> list[Path]:
    from donut_hole.evaluation.dataset import DatasetError, read_dataset
    from donut_hole.worker.process import is_image_uri

    files: list[Path] = []
    for target in targets:
        path = Path(target)
        if path.is_dir():
            if (path / "metadata.jsonl").is_file():
                try:
                    files.extend(sample.image_path for sample in read_dataset(path))
                except DatasetError as exc:
                    raise fail(str(exc)) from exc
            else:
                files.extend(sorted(p for p in path.iterdir() if p.is_file() and is_image_uri(p.name)))
        elif path.is_file():
            files.append(path)
        else:
            raise fail(f"{target} is neither an s3:// URI nor an existing file or folder")
    if not files:
        raise fail(f"no images in {', '.join(targets)}")
    return files


def enqueue(
    targets: Annotated[
        list[str] | None,
        typer.Argument(
            help="s3://bucket/prefix/ (listed by a task), s3:// object URIs, a folder of scans (or a DONUT "
            "dataset folder) or scan files; local files are uploaded to the object store first."
        ),
    ] = None,
    resend: Annotated[
        str | None, typer.Option(help="Send the still-queued documents of this batch again.")
    ] = None,
    retry_failed_batch: Annotated[
        str | None,
        typer.Option(
            "--retry-failed",
            metavar="BATCH",
            help="Queue again the documents of this batch that failed for a transient reason "
            "('transient: ...': an outage longer than DONUT_HOLE_RETRY_BUDGET_S).",
        ),
    ] = None,
    recover: Annotated[
        bool,
        typer.Option(
            "--recover",
            help="Send again every document left 'processing' by a worker that vanished (what each "
            "worker's watchdog does once a minute).",
        ),
    ] = False,
    older_than: Annotated[
        float | None,
        typer.Option(
            min=0, help="With --recover: seconds in 'processing' (default: DONUT_HOLE_STALLED_AFTER_S)."
        ),
    ] = None,
    callback_url: Annotated[
        str | None,
        typer.Option(
            help="POSTed to (signed) once the batch has no queued or processing document left; must be "
            "under DONUT_HOLE_CALLBACK_ALLOWED_URLS."
        ),
    ] = None,
    review_threshold: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="A document with a field below this confidence ends needs_review (a person checks it: "
            "the API's /review page) instead of done; default: DONUT_HOLE_REVIEW_THRESHOLD.",
        ),
    ] = None,
) -> None:
    """Queue scans for reading; prints the batch id."""
    from sqlalchemy.exc import OperationalError

    from donut_hole.services import Services
    from donut_hole.worker.enqueue import EnqueueError, NotStored, submit_files, submit_prefix, submit_uris
    from donut_hole.worker.recovery import never_uploaded, recover_stalled, resend_queued, retry_failed
    from donut_hole.worker.sending import BrokerUnavailable

    settings = load_settings()
    targets = targets or []
    modes = [name for name, on in (("--resend", resend), ("--retry-failed", retry_failed_batch),
                                   ("--recover", recover)) if on]  # fmt: skip
    if modes and (targets or len(modes) > 1):
        raise fail(f"{modes[0]} takes no other arguments")
    if older_than is not None and not recover:
        raise fail("--older-than goes with --recover")
    if callback_url is not None and modes:
        raise fail("--callback-url goes with new scans to enqueue")
    if review_threshold is not None and modes:
        raise fail("--review-threshold goes with new scans to enqueue")
    if not (targets or modes):
        raise fail("give an s3:// prefix, s3:// URIs, a folder or files to enqueue")
    s3 = [t.startswith("s3://") for t in targets]
    if any(s3) and not all(s3):
        raise fail("do not mix s3:// URIs and local files in one call")
    try:
        with Services(settings) as services:
            if modes:
                if resend:
                    sent = resend_queued(services, batch_id=resend)
                    what = f"queued documents of batch {resend}"
                elif retry_failed_batch:
                    sent = retry_failed(services, batch_id=retry_failed_batch)
                    what = f"documents of batch {retry_failed_batch} that failed for a transient reason"
                    unsent = never_uploaded(services, batch_id=retry_failed_batch)
                    if unsent:  # their bytes never reached the store: queued again they could only fail
                        err_console.print(f"sent {sent} {what} again")
                        raise fail(
                            f"{len(unsent)} document(s) of this batch were never uploaded (the object store "
                            f"refused them) and cannot be queued again: enqueue their files again: "
                            f"{', '.join(unsent)}",
                            code=1,
                        )
                else:
                    sent = recover_stalled(services, older_than_s=older_than)
                    what = "stalled documents"
                err_console.print(f"sent {sent} {what} again")
                return
            if any(s3) and len(targets) == 1 and _is_prefix(targets[0]):
                batch_id = submit_prefix(
                    services,
                    prefix_uri=targets[0],
                    callback_url=callback_url,
                    review_threshold=review_threshold,
                )
            elif any(s3):
                batch_id = submit_uris(
                    services,
                    uris=targets,
                    source="cli",
                    callback_url=callback_url,
                    review_threshold=review_threshold,
                )
            else:
                files = _local_files(targets)
                batch_id = submit_files(
                    services,
                    paths=files,
                    source="cli",
                    callback_url=callback_url,
                    review_threshold=review_threshold,
                )
    except NotStored as exc:  # the others are queued: their batch id still goes to stdout
        typer.echo(exc.batch_id)
        raise fail(str(exc), code=1) from exc
    except (EnqueueError, BrokerUnavailable) as exc:
        raise fail(str(exc)) from exc
    except OperationalError as exc:
        raise fail(database_problem(settings, exc)) from exc
    typer.echo(batch_id)
    err_console.print(f"follow it with: donut-hole results --batch {batch_id}")


def _csv_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    names = sorted({name for row in rows for name in row["fields"]})
    fixed = ["document_id", "uri", "page", "page_count", "status", "error", "note", "attempts", "model_id"]
    fixed.append("confidence")
    header = [*fixed, *names]
    out = []
    for row in rows:
        flat = {key: row[key] for key in fixed}
        for name in names:
            value = row["fields"].get(name, "")
            flat[name] = " | ".join(value) if isinstance(value, list) else value
        out.append(flat)
    return header, out


def export(
    out: Annotated[Path, typer.Option(help="Folder to write (new or empty): images and metadata.jsonl.")],
    reviewed: Annotated[
        bool,
        typer.Option("--reviewed", help="Every document a person reviewed, its truth the reviewed values."),
    ] = False,
    batch: Annotated[str | None, typer.Option(help="Only this batch's documents.")] = None,
) -> None:
    """Write documents as a DONUT dataset (images and metadata.jsonl) for training.

    With --reviewed: every document whose latest values are a reviewer's, its page as a JPEG and its
    ground truth the reviewed values; `donut-hole train` with `init:` the current model fine-tunes on the
    folder (--train). A scan the store cannot give back is left out with a line saying so.
    """
    from sqlalchemy.exc import OperationalError

    from donut_hole.db import repository, session_scope
    from donut_hole.scans import DocumentError, load_page
    from donut_hole.services import Services
    from donut_hole.storage import StorageError

    if not reviewed:
        raise fail("say what to export: --reviewed (the documents people reviewed)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise fail(f"--out {out} is not an empty folder: name a new one")
    settings = load_settings()
    try:
        with Services(settings) as services:
            with session_scope(services.sessions) as session:
                rows = [
                    (document.id, document.source_uri, document.page, extraction.data, extraction.reviewer)
                    for document, extraction in repository.reviewed(session, batch_id=batch)
                ]
            out.mkdir(parents=True, exist_ok=True)
            lines: list[str] = []
            skipped = 0
            for document_id, uri, page, data, reviewer in rows:
                try:
                    blob = services.store.get(uri, max_bytes=settings.max_image_bytes)
                    image = load_page(
                        blob, page=page, target_size=(2560, 2560), max_pixels=settings.max_image_pixels
                    )
                except (StorageError, DocumentError) as exc:
                    skipped += 1
                    err_console.print(
                        f"left out {document_id}: {getattr(exc, 'reason', None) or type(exc).__name__}"
                    )
                    continue
                name = f"{len(lines):06d}.jpg"
                image.save(out / name, format="JPEG", quality=95)
                truth = json.dumps({"gt_parse": data}, ensure_ascii=False)
                lines.append(
                    json.dumps(
                        {
                            "file_name": name,
                            "ground_truth": truth,
                            "document_id": document_id,
                            "reviewer": reviewer,
                        },
                        ensure_ascii=False,
                    )
                )
    except OperationalError as exc:
        raise fail(database_problem(settings, exc)) from exc
    (out / "metadata.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    err_console.print(
        f"wrote {len(lines)} reviewed document(s) to {out}" + (f"; {skipped} left out" if skipped else "")
    )


def results(
    batch: Annotated[str, typer.Option("--batch", help="Batch id (printed by enqueue).")],
    format: Annotated[
        OutputFormat, typer.Option("--format", help="table, json or csv.")
    ] = OutputFormat.table,
) -> None:
    """Show a batch's documents (a page each): status, error or note, confidence and fields."""
    from sqlalchemy.exc import OperationalError

    from donut_hole.db import repository, session_scope
    from donut_hole.services import Services

    settings = load_settings()
    try:
        with Services(settings) as services, session_scope(services.sessions) as session:
            found = repository.get_batch(session, batch_id=batch)
            if found is None:
                raise fail(f"batch {batch!r} does not exist in {settings.database_url.split('@')[-1]}")
            counts = repository.batch_progress(session, batch_id=batch)
            status, error = repository.batch_state(found.status, counts), found.error
            rows: list[dict[str, Any]] = [
                dict(row) for row in repository.results_for_batch(session, batch_id=batch)
            ]
    except OperationalError as exc:
        raise fail(database_problem(settings, exc)) from exc
    if format is OutputFormat.json:
        typer.echo(
            json.dumps(
                {"batch_id": batch, "status": status, "error": error, "counts": counts, "documents": rows},
                indent=2,
                ensure_ascii=False,
            )
        )
        return
    if format is OutputFormat.csv:
        header, flat = _csv_rows(rows)
        writer = csv.DictWriter(sys.stdout, fieldnames=header)
        writer.writeheader()
        writer.writerows(flat)
        return
    table = Table(title=f"batch {batch} ({status})")
    for column in ("document", "status", "confidence", "fields", "error / note"):
        table.add_column(column, overflow="fold")
    for row in rows:
        fields = "; ".join(f"{k}={v}" for k, v in row["fields"].items())
        confidence = f"{row['confidence']:.3f}" if row["confidence"] is not None else ""
        name = row["uri"].rsplit("/", 1)[-1]
        if row["page_count"] and row["page_count"] > 1:
            name = f"{name.removesuffix('#page=' + str(row['page']))} p. {row['page']}/{row['page_count']}"
        table.add_row(
            name,
            row["status"],
            confidence,
            fields[:200],
            row["error"] or row["note"] or "",
        )
    console.print(table)
    summary = ", ".join(f"{k} {v}" for k, v in counts.items())
    console.print(f"{summary}" + (f"; listing failed: {error}" if error else ""), highlight=False)


def batches(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first.")] = 20,
    finished: Annotated[
        bool | None,
        typer.Option(
            "--finished/--unfinished", help="Only batches with nothing left to read, or only those with work."
        ),
    ] = None,
    format: Annotated[
        OutputFormat, typer.Option("--format", help="table, json or csv.")
    ] = OutputFormat.table,
) -> None:
    """List the newest batches with their progress (documents per status)."""
    from sqlalchemy.exc import OperationalError

    from donut_hole.db import DocumentStatus, repository, session_scope
    from donut_hole.services import Services

    statuses = [status.value for status in DocumentStatus]
    settings = load_settings()
    try:
        with Services(settings) as services, session_scope(services.sessions) as session:
            total, found = repository.list_batches(session, limit=limit, finished=finished)
            progress = repository.batches_progress(session, batch_ids=[batch.id for batch in found])
            rows: list[dict[str, Any]] = [
                {
                    "batch_id": batch.id,
                    "created_at": batch.created_at.isoformat(),
                    "source": batch.source,
                    "status": repository.batch_state(batch.status, progress[batch.id]),
                    **{name: progress[batch.id][name] for name in statuses},
                }
                for batch in found
            ]
    except OperationalError as exc:
        raise fail(database_problem(settings, exc)) from exc
    if format is OutputFormat.json:
        typer.echo(json.dumps({"total": total, "batches": rows}, indent=2))
        return
    if format is OutputFormat.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["batch_id"])
        writer.writeheader()
        writer.writerows(rows)
        return
    table = Table(title=f"{len(rows)} of {total} batches, newest first")
    for column in ("batch", "created (UTC)", "source", "status", *statuses):
        table.add_column(column, overflow="fold")
    for row in rows:
        created = row["created_at"][:16].replace("T", " ")
        counts = [str(row[name]) for name in statuses]
        table.add_row(row["batch_id"], created, row["source"], row["status"], *counts)
    console.print(table)


def migrate() -> None:
    """Create or upgrade the database tables (Alembic migrations to the newest revision)."""
    from donut_hole.db import migrate as migrations

    settings = load_settings()
    if settings.database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(settings.database_url)
    console.print(
        f"database at revision {migrations.head_revision()}: {settings.database_url.split('@')[-1]}"
    )


def api(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes.")] = 1,
) -> None:
    """Serve the HTTP API (uvicorn, donut_hole.api.main:create_app)."""
    import uvicorn

    load_settings()  # fail here, with the variable's name, rather than inside uvicorn
    uvicorn.run("donut_hole.api.main:create_app", factory=True, host=host, port=port, workers=workers)
