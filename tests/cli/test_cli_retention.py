"""``donut-hole batches``, ``delete`` and ``purge`` on the embedded defaults (SQLite, a local store)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update
from typer.testing import CliRunner

from donut_hole.cli import app
from donut_hole.cli.retention import parse_age
from donut_hole.db import Batch, make_engine, repository, session_factory, session_scope
from donut_hole.db.models import utcnow
from donut_hole.settings import Settings

runner = CliRunner()


def _failed_batch(settings: Settings, *, days_old: float = 0) -> str:
    engine = make_engine(settings.database_url)
    with session_scope(session_factory(engine)) as session:
        batch_id = repository.create_batch(
            session, source="test", uris=["s3://b/x.png"], errors=["corrupt"]
        ).id
        created = utcnow() - timedelta(days=days_old)
        session.execute(update(Batch).where(Batch.id == batch_id).values(created_at=created))
    engine.dispose()
    return batch_id


def _exists(settings: Settings, batch_id: str) -> bool:
    engine = make_engine(settings.database_url)
    with session_scope(session_factory(engine)) as session:
        found = repository.get_batch(session, batch_id=batch_id) is not None
    engine.dispose()
    return found


def test_delete_removes_a_finished_batch_and_its_uploaded_files(settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"\x89PNG" + b"a" * 100)
    batch_id = runner.invoke(app, ["enqueue", str(folder)]).stdout.strip()
    uploads = tmp_path / "store" / "uploads"
    assert len(list(uploads.rglob("a.png"))) == 1

    busy = runner.invoke(app, ["delete", batch_id])
    assert busy.exit_code == 1 and "still queued" in " ".join(busy.output.split())
    assert _exists(settings, batch_id)

    engine = make_engine(settings.database_url)
    with session_scope(session_factory(engine)) as session:
        (document,) = repository.pages_of(
            session, document=repository.first_pages(session, batch_id=batch_id)[0]
        )
        repository.mark_failed(session, document_id=document.id, error="corrupt")
    engine.dispose()
    result = runner.invoke(app, ["delete", batch_id, "0" * 36])
    assert result.exit_code == 1  # the unknown id is refused; the batch is deleted all the same
    assert result.stdout.strip() == batch_id
    said = " ".join(result.output.split())  # as the console wrapped it
    assert "1 documents, 1 uploaded scans" in said and "does not exist" in said
    assert not _exists(settings, batch_id) and not list(uploads.rglob("a.png"))


def test_purge_deletes_finished_batches_older_than_the_age(settings: Settings) -> None:
    old, recent = _failed_batch(settings, days_old=40), _failed_batch(settings, days_old=1)
    listed = runner.invoke(app, ["purge", "--older-than", "30d", "--dry-run"])
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.split() == [old] and _exists(settings, old)

    purged = runner.invoke(app, ["purge", "--older-than", "30d"])
    assert purged.exit_code == 0, purged.output
    assert purged.stdout.split() == [old] and "deleted 1 batches" in " ".join(purged.output.split())
    assert not _exists(settings, old) and _exists(settings, recent)
    assert runner.invoke(app, ["purge", "--older-than", "soon"]).exit_code == 2


def test_ages() -> None:
    assert parse_age("30d") == timedelta(days=30)
    assert parse_age(" 12h ") == timedelta(hours=12)
    assert parse_age("90m") == timedelta(minutes=90)
    assert parse_age("1.5h") == timedelta(minutes=90)


def test_batches_lists_the_newest_with_their_progress(settings: Settings) -> None:
    done = _failed_batch(settings, days_old=2)
    engine = make_engine(settings.database_url)
    with session_scope(session_factory(engine)) as session:
        running = repository.create_batch(session, source="test", uris=["s3://b/y.png"]).id
    engine.dispose()
    listed = runner.invoke(app, ["batches", "--format", "json"])
    assert listed.exit_code == 0, listed.output
    answer = json.loads(listed.stdout)
    assert answer["total"] == 2 and [row["batch_id"] for row in answer["batches"]] == [running, done]
    assert [answer["batches"][1][name] for name in ("queued", "done", "failed")] == [0, 0, 1]
    assert runner.invoke(app, ["batches"]).exit_code == 0  # the table
    unfinished = runner.invoke(app, ["batches", "--unfinished", "--format", "csv"])
    assert running in unfinished.stdout and done not in unfinished.stdout
    finished = runner.invoke(app, ["batches", "--finished", "--format", "json"])
    assert [row["batch_id"] for row in json.loads(finished.stdout)["batches"]] == [done]
