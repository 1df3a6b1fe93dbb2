"""``donut-hole enqueue``: a folder with bad files, and --retry-failed, on the embedded defaults."""

from __future__ import annotations

from pathlib import Path

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
