"""``donut-hole enqueue``: a folder with bad files, and --retry-failed, on the embedded defaults."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from donut_hole.cli import app
from donut_hole.db import make_engine, repository, session_factory, session_scope
from donut_hole.settings import Settings

runner = CliRunner()


def _rows(settings: Settings, batch_id: str) -> dict[str, tuple[str, str | None]]:
    engine = make_engine(settings.database_url)
    with session_scope(session_factory(engine)) as session:
        rows = repository.results_for_batch(session, batch_id=batch_id)
    engine.dispose()
    return {row["uri"].rsplit("/", 1)[-1]: (row["status"], row["error"]) for row in rows}


def test_a_folder_with_an_empty_file_is_queued_with_that_file_failed(
    settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"\x89PNG" + b"a" * 100)
    (folder / "empty.png").write_bytes(b"")
    result = runner.invoke(app, ["enqueue", str(folder)])
    assert result.exit_code == 0, result.output
    batch_id = result.stdout.strip().splitlines()[0]
    assert _rows(settings, batch_id) == {
        "a.png": ("queued", None),
        "empty.png": ("failed", "empty.png is empty"),
    }


def test_retry_failed_queues_transient_failures_again(settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    with session_scope(session_factory(engine)) as session:
        batch = repository.create_batch(
            session, source="test", uris=["x.png", "y.png"], errors=["transient: S3 down", "corrupt image"]
        )
        batch_id = batch.id
    engine.dispose()
    result = runner.invoke(app, ["enqueue", "--retry-failed", batch_id])
    assert result.exit_code == 0, result.output
    assert "sent 1 documents of batch" in result.output
    assert _rows(settings, batch_id)["x.png"][0] == "queued"
    assert runner.invoke(app, ["enqueue", "--retry-failed", batch_id, "more.png"]).exit_code != 0


def test_files_the_store_refuses_are_retried_reported_and_never_queued_without_their_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An S3 outage during an upload: the puts are retried within the retry budget, then the command names
    the files it could not store and exits 1 (the batch id still printed); --retry-failed does not queue
    them again (they would only fail as "object not found") and says to enqueue their files again."""
    from donut_hole.db import migrate
    from donut_hole.settings import get_settings

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: every connection is refused
        port = closed.getsockname()[1]
        for name, value in {
            "DATA_DIR": str(tmp_path), "STORAGE_URL": "s3://scans/in", "S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "RETRY_BUDGET_S": "1.5", "RETRY_BACKOFF_MAX_S": "0.5", "DATABASE_URL": "", "BROKER_URL": "",
        }.items():  # fmt: skip
            monkeypatch.setenv(f"DONUT_HOLE_{name}", value)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        get_settings.cache_clear()
        settings = get_settings()
        migrate.upgrade(settings.database_url)
        folder = tmp_path / "scans"
        folder.mkdir()
        for name in ("a.png", "b.png"):
            (folder / name).write_bytes(b"\x89PNG" + name.encode() * 50)
        started = time.monotonic()
        result = runner.invoke(app, ["enqueue", str(folder)])
        waited = time.monotonic() - started
        again = runner.invoke(app, ["enqueue", "--retry-failed", result.stdout.strip().splitlines()[0]])
    get_settings.cache_clear()
    assert result.exit_code == 1, result.output
    batch_id = result.stdout.strip().splitlines()[0]
    output = " ".join(result.output.split())
    assert "2 file(s) of batch" in output and "a.png, b.png" in output
    assert 1.0 <= waited < 30  # retried for the budget, once for the whole upload
    rows = _rows(settings, batch_id)
    assert all(status == "failed" and error.startswith("not uploaded: ") for status, error in rows.values())
    assert again.exit_code == 1
    assert "enqueue their files again: a.png, b.png" in " ".join(again.output.split())
    assert all(status == "failed" for status, _ in _rows(settings, batch_id).values())  # not queued again
