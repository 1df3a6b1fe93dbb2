"""A worker killed mid-group on the embedded defaults (SQLite database, SQLite broker, local store).

The SQLite transport never hands a killed worker's message to anyone else; the watchdog of the next worker
finds the documents left ``processing`` and sends them again. Nothing is lost, nothing stored twice.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from worker_helpers import database, kill_while_reading, wait_for_batch

from donut_hole.db import Document, Extraction, migrate, session_scope
from donut_hole.services import Services
from donut_hole.settings import Settings
from donut_hole.worker.enqueue import submit_files
from donut_hole.worker.recovery import recover_stalled


def _documents(settings: Settings, batch_id: str) -> dict[str, tuple[str, int, int]]:
    """``{id: (status, attempts, extractions)}`` of the batch."""
    with database(settings) as sessions, session_scope(sessions) as session:
        rows = session.execute(
            select(Document.id, Document.status, Document.attempts, func.count(Extraction.id))
            .outerjoin(Extraction, Extraction.document_id == Document.id)
            .where(Document.batch_id == batch_id)
            .group_by(Document.id)
        )
        return {row[0]: (row[1].value, row[2], row[3]) for row in rows}


@pytest.fixture
def embedded_settings(tmp_path: Path, tiny_model: Path) -> Settings:
    settings = Settings(
        data_dir=tmp_path / "var",
        model_path=tiny_model,
        max_new_tokens=256,  # slow groups: the kill lands while one is being read
        batch_size=2,
        batch_wait_s=0.2,
        torch_threads=1,
        max_retries=2,
        queue="embedded-recovery",
    )
    settings.data_dir.mkdir()
    migrate.upgrade(settings.database_url)
    return settings


@pytest.mark.slow
def test_the_watchdog_sends_again_what_a_killed_worker_left_processing(
    embedded_settings: Settings, start_worker, scan_dir: Path
) -> None:
    settings = embedded_settings
    assert settings.broker_url.startswith("sqla+sqlite:") and settings.database_url.startswith("sqlite:")
    with Services(settings) as services:
        batch_id = submit_files(services, paths=sorted(scan_dir.glob("*.jpg"))[:8], source="test")
    in_flight = kill_while_reading(settings, batch_id, start_worker(settings))  # after one group was stored

    # Not old enough yet for the default age (the hard time limit + 60 s): nothing is taken back.
    with Services(settings) as services:
        assert recover_stalled(services) == 0
    # The next worker's watchdog counts 2 s in 'processing' as lost (DONUT_HOLE_STALLED_AFTER_S).
    second = start_worker(settings.model_copy(update={"stalled_after_s": 2}))
    counts = wait_for_batch(settings, batch_id, worker=second, timeout_s=120)

    documents = _documents(settings, batch_id)
    assert counts["done"] == len(documents) == 8 and counts["failed"] == 0
    assert all(extractions == 1 for _, _, extractions in documents.values()), "a document was stored twice"
    assert all(documents[i][1] == 2 for i in in_flight), "the killed group was not read again"
    assert '"event": "documents.recovered"' in second.log_tail(200)
