"""Commands that delete results: ``delete`` (batches by id) and ``purge`` (finished batches past an age).

Thin shells over :mod:`donut_hole.worker.retention`: rows go from the database, uploaded scans from the
object store; scans in your own buckets stay.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from donut_hole.cli.common import database_problem, err_console, fail, load_settings

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dhm])\s*$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_age(text: str) -> timedelta:
    """``"30d"`` → 30 days, ``"12h"`` → 12 hours, ``"90m"`` → 90 minutes.

    >>> parse_age("30d"), parse_age("1.5h")
    (datetime.timedelta(days=30), datetime.timedelta(seconds=5400))
    """
    match = _AGE.match(text)
    if match is None:
        raise typer.BadParameter(f"{text!r} is not an age: write a number and d, h or m (30d, 12h, 90m)")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


def delete(
    batch_ids: Annotated[list[str], typer.Argument(metavar="BATCH_ID...", help="Batches to delete.")],
) -> None:
    """Delete finished batches: their documents, results and uploaded scans (final).

    A batch with documents still queued or being read is refused and kept; the others go on.
    """
    from sqlalchemy.exc import OperationalError

    from donut_hole.db import repository
    from donut_hole.services import Services
    from donut_hole.storage import StorageError
    from donut_hole.worker import retention

    settings = load_settings()
    refused = 0
    try:
        with Services(settings) as services:
            for batch_id in batch_ids:
                try:
                    deleted = retention.delete_batch(services, batch_id=batch_id)
                except (repository.BatchNotFound, repository.BatchBusy, StorageError) as exc:
                    err_console.print(f"[bold red]not deleted:[/] {exc}")
                    refused += 1
                    continue
                typer.echo(batch_id)
                what = f"{deleted.documents} documents, {deleted.uploads} uploaded scans"
                err_console.print(f"deleted batch {batch_id}: {what}")
    except OperationalError as exc:
        raise fail(database_problem(settings, exc)) from exc
    if refused:
        raise typer.Exit(1)


def purge(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than", metavar="AGE", help="Delete batches created longer ago than this: 30d, 12h."
        ),
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the batches; delete nothing.")] = False,
) -> None:
    """Delete every finished batch created before an age, with its results and uploaded scans (final).

    For retention: run it from cron or a Kubernetes CronJob. Batches with work under way are kept for the
    next run. Prints the ids it deletes.
    """
    from sqlalchemy.exc import OperationalError

    from donut_hole.db import repository, session_scope
    from donut_hole.services import Services
    from donut_hole.storage import StorageError
    from donut_hole.worker import retention

    cutoff = datetime.now(UTC) - parse_age(older_than)
    settings = load_settings()
    batches = documents = uploads = 0
    try:
        with Services(settings) as services:
            if dry_run:
                with session_scope(services.sessions) as session:
                    found = repository.finished_batches(session, created_before=cutoff, limit=None)
                for batch_id in found:
                    typer.echo(batch_id)
                err_console.print(f"{len(found)} finished batches created before {cutoff:%Y-%m-%d %H:%M} UTC")
                return
            for deleted in retention.purge(services, created_before=cutoff):
                typer.echo(deleted.batch_id)
                batches, documents, uploads = (
                    batches + 1,
                    documents + deleted.documents,
                    uploads + deleted.uploads,
                )
    except StorageError as exc:
        raise fail(f"stopped after {batches} batches: {exc}; the batch is kept, run purge again") from exc
    except OperationalError as exc:
        raise fail(database_problem(settings, exc)) from exc
    err_console.print(
        f"deleted {batches} batches created before {cutoff:%Y-%m-%d %H:%M} UTC: {documents} documents, "
        f"{uploads} uploaded scans"
    )
