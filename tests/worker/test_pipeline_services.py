"""The pipeline end to end on real services: moto S3 → Redis → ``celery worker`` processes → PostgreSQL."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from conftest import save_tiny_model
from sqlalchemy import func, select
from worker_helpers import Worker, database, kill_while_reading, wait_for_batch

from donut_hole.db import Document, Extraction, Field, make_engine, repository, session_factory, session_scope
from donut_hole.services import Services
from donut_hole.settings import Settings
from donut_hole.storage import open_store
from donut_hole.worker.enqueue import submit_prefix, submit_upload, submit_uris

pytestmark = pytest.mark.services


def _upload(settings: Settings, folder: Path, prefix: str) -> list[str]:
    store = open_store(settings.storage_url, endpoint_url=settings.s3_endpoint_url)
    return [store.put(f"{prefix}/{path.name}", path.read_bytes()) for path in sorted(folder.glob("*.jpg"))]


def _submit(settings: Settings, uris: list[str]) -> str:
    with Services(settings) as services:
        return submit_uris(services, uris=uris, source="test")


def _documents(settings: Settings, batch_id: str) -> list[dict]:
    with database(settings) as sessions, session_scope(sessions) as session:
        rows = session.execute(
            select(
                Document.id,
                Document.status,
                Document.error,
                Document.attempts,
                func.count(Extraction.id.distinct()),
                func.count(Field.id),
            )
            .outerjoin(Extraction, Extraction.document_id == Document.id)
            .outerjoin(Field, Field.extraction_id == Extraction.id)
            .where(Document.batch_id == batch_id)
            .group_by(Document.id)
        )
        keys = ("id", "status", "error", "attempts", "extractions", "fields")
        return [dict(zip(keys, row, strict=True)) for row in rows]


def test_a_batch_of_20_scans_flows_from_s3_to_postgres(
    pipeline_settings: Settings, shared_worker: Worker, scan_dir: Path
) -> None:
    uris = _upload(pipeline_settings, scan_dir, f"flow-{uuid.uuid4().hex[:6]}")
    assert len(uris) == 20 and all(uri.startswith("s3://") for uri in uris)

    batch_id = _submit(pipeline_settings, uris)
    counts = wait_for_batch(pipeline_settings, batch_id, worker=shared_worker)

    assert counts == {"queued": 0, "processing": 0, "done": 20, "failed": 0, "needs_review": 0, "total": 20}
    documents = _documents(pipeline_settings, batch_id)
    assert all(d["extractions"] == 1 and d["fields"] >= 1 and d["attempts"] == 1 for d in documents)
    engine = make_engine(pipeline_settings.database_url)
    with session_scope(session_factory(engine)) as session:
        results = repository.results_for_batch(session, batch_id=batch_id)
        extraction = session.scalars(
            select(Extraction).join(Document).where(Document.batch_id == batch_id)
        ).first()
        assert extraction is not None and extraction.latency_ms and extraction.latency_ms > 0
        assert extraction.model.name == "tiny" and len(extraction.model.sha256) == 64
    engine.dispose()
    assert sorted(r["uri"] for r in results) == sorted(uris)
    assert all(0.0 <= (r["confidence"] or 0) <= 1.0 and r["model_id"] for r in results)
    # The untrained model reads nothing valid: stored and done, with the schema mismatch as a note, and
    # the cut at 16 tokens (it never ends by itself).
    assert all(r["note"] and r["note"].startswith("cut: ") and r["error"] is None for r in results)
    assert all("; schema: " in r["note"] for r in results)
    # The pool processes' metrics, summed and served by the worker's main process.
    metrics = shared_worker.metrics()
    assert metrics["donut_hole_documents_processed_total"] >= 20
    assert metrics["donut_hole_batch_size_count"] >= 5 and metrics["donut_hole_batch_size_sum"] >= 20
    assert metrics["donut_hole_document_latency_seconds_count"] >= 20


def test_bad_scans_fail_alone_with_clear_reasons(
    pipeline_settings: Settings, shared_worker: Worker, scan_dir: Path
) -> None:
    store = open_store(pipeline_settings.storage_url, endpoint_url=pipeline_settings.s3_endpoint_url)
    prefix = f"bad-{uuid.uuid4().hex[:6]}"
    good = [store.put(f"{prefix}/{p.name}", p.read_bytes()) for p in sorted(scan_dir.glob("*.jpg"))[:3]]
    jpeg = (scan_dir / "000005.jpg").read_bytes()
    corrupt = store.put(f"{prefix}/corrupt.jpg", jpeg[: len(jpeg) // 3])
    text = store.put(f"{prefix}/notes.jpg", b"this is a packing list, typed as text\n" * 20)
    missing = f"{store.url}/{prefix}/missing.jpg"
    # Groups of 4 in this order: every group mixes good and bad documents.
    uris = [good[0], corrupt, missing, good[1], text, good[2]]

    batch_id = _submit(pipeline_settings, uris)
    counts = wait_for_batch(pipeline_settings, batch_id, worker=shared_worker)

    assert counts["done"] == 3 and counts["failed"] == 3
    engine = make_engine(pipeline_settings.database_url)
    with session_scope(session_factory(engine)) as session:
        by_uri = {r["uri"]: r for r in repository.results_for_batch(session, batch_id=batch_id)}
    engine.dispose()
    assert all(by_uri[uri]["status"] == "done" for uri in good)
    assert by_uri[missing]["status"] == "failed"
    assert "object not found" in by_uri[missing]["error"] and missing in by_uri[missing]["error"]
    assert by_uri[corrupt]["status"] == "failed"
    assert by_uri[corrupt]["error"].startswith(("corrupt image", "not a readable image"))
    assert by_uri[text]["status"] == "failed"
    assert by_uri[text]["error"].startswith("not a readable image")
    assert all(by_uri[uri]["fields"] == {} for uri in (missing, corrupt, text))


def test_a_prefix_is_expanded_by_a_task_and_uploads_are_stored_first(
    pipeline_settings: Settings, shared_worker: Worker, scan_dir: Path
) -> None:
    prefix = f"prefix-{uuid.uuid4().hex[:6]}"
    store = open_store(pipeline_settings.storage_url, endpoint_url=pipeline_settings.s3_endpoint_url)
    for path in sorted(scan_dir.glob("*.jpg"))[:5]:
        store.put(f"{prefix}/{path.name}", path.read_bytes())
    store.put(
        f"{prefix}/metadata.jsonl", (scan_dir / "metadata.jsonl").read_bytes()
    )  # not an image: left out

    with Services(pipeline_settings) as services:
        batch_id = submit_prefix(services, prefix_uri=f"{store.url}/{prefix}/")
        upload_batch, document_id = submit_upload(
            services, data=(scan_dir / "000007.jpg").read_bytes(), filename="../Scan 7.JPG"
        )

    assert wait_for_batch(pipeline_settings, batch_id, worker=shared_worker)["done"] == 5
    assert wait_for_batch(pipeline_settings, upload_batch, worker=shared_worker)["done"] == 1
    engine = make_engine(pipeline_settings.database_url)
    with session_scope(session_factory(engine)) as session:
        assert repository.get_batch(session, batch_id=batch_id).status.value == "accepted"
        document = repository.get_document(session, document_id=document_id)
        assert document.uri.endswith("/Scan_7.JPG") and "/uploads/" in document.uri
        assert document.sha256 and document.status.value == "done"
    engine.dispose()


@pytest.mark.slow
def test_a_worker_killed_mid_batch_loses_and_duplicates_nothing(
    pipeline_settings: Settings, start_worker, scan_dir: Path
) -> None:
    # Its own queue (the shared worker must not take these messages), slower groups of 2 documents.
    settings = pipeline_settings.model_copy(
        update={"queue": f"{pipeline_settings.queue}-kill", "batch_size": 2, "max_new_tokens": 256}
    )
    uris = _upload(settings, scan_dir, f"kill-{uuid.uuid4().hex[:6]}")[:12]
    batch_id = _submit(settings, uris)
    app = "tests.worker.celery_test_app:celery_app"
    first = start_worker(settings, app=app, concurrency=1)
    in_flight = kill_while_reading(settings, batch_id, first)  # after at least one group was stored

    second = start_worker(settings, app=app, concurrency=1)
    counts = wait_for_batch(settings, batch_id, worker=second, timeout_s=120)

    assert counts["done"] == len(uris) and counts["failed"] == 0
    documents = {d["id"]: d for d in _documents(settings, batch_id)}
    assert all(d["extractions"] == 1 for d in documents.values()), "a document was stored twice"
    assert all(documents[i]["attempts"] == 2 for i in in_flight), "the killed group was not redelivered"


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory, scan_dir: Path) -> Path:
    """The tiny DONUT at donut-base's input size, 2560x1920: its encoder alone takes seconds for a group of
    4 pages on any CPU (5 s on 2 busy cores, 2-3 idle), far past a 1 s time limit."""
    return save_tiny_model(scan_dir, tmp_path_factory.mktemp("model") / "slow", image_size=(2560, 1920))


@pytest.mark.slow
def test_a_group_over_the_time_limit_fails_with_the_reason(
    pipeline_settings: Settings, start_worker, scan_dir: Path, slow_model: Path
) -> None:
    # 1 s per group, and groups that take longer: the soft limit stops the work, the documents say why.
    settings = pipeline_settings.model_copy(
        update={
            "queue": f"{pipeline_settings.queue}-slow",
            "task_time_limit_s": 1,
            "max_new_tokens": 480,
            "model_path": slow_model,
        }
    )
    uris = _upload(settings, scan_dir, f"slow-{uuid.uuid4().hex[:6]}")[:4]
    batch_id = _submit(settings, uris)

    counts = wait_for_batch(settings, batch_id, worker=start_worker(settings), timeout_s=90)

    assert counts["failed"] == 4
    documents = _documents(settings, batch_id)
    assert {d["error"] for d in documents} == {
        "timed out: reading a group of 4 documents took longer than 1 s (DONUT_HOLE_TASK_TIME_LIMIT_S)"
    }
    assert [d["attempts"] for d in documents] == [1] * 4, "a timed-out group was read again"


def test_a_worker_loads_its_model_before_the_first_group_comes(
    pipeline_settings: Settings, start_worker, scan_dir: Path
) -> None:
    # Its own queue, empty: the pool process loads the model at start, and the group that comes later
    # uses that model (one load in all).
    settings = pipeline_settings.model_copy(update={"queue": f"{pipeline_settings.queue}-preload"})
    worker = start_worker(settings)
    deadline = time.monotonic() + 60
    while '"model.loaded"' not in worker.log_path.read_text(errors="replace"):
        assert worker.process.poll() is None, worker.log_tail()
        assert time.monotonic() < deadline, f"no model loaded without a task:\n{worker.log_tail()}"
        time.sleep(0.2)
    uris = _upload(settings, scan_dir, f"preload-{uuid.uuid4().hex[:6]}")[:2]
    counts = wait_for_batch(settings, _submit(settings, uris), worker=worker)

    assert counts["done"] == 2
    assert worker.log_path.read_text(errors="replace").count('"model.loaded"') == 1, worker.log_tail()


def test_a_batch_with_a_review_threshold_ends_its_unsure_documents_needs_review(
    pipeline_settings: Settings, shared_worker: Worker, scan_dir: Path
) -> None:
    """The untrained model is unsure of everything: at a threshold of 1 every document waits for review;
    without one the same scans end done."""
    uris = _upload(pipeline_settings, scan_dir, f"review-{uuid.uuid4().hex[:6]}")[:3]
    with Services(pipeline_settings) as services:
        reviewed = submit_uris(services, uris=uris, source="test", review_threshold=1.0)
    counts = wait_for_batch(pipeline_settings, reviewed, worker=shared_worker)
    assert counts["needs_review"] == 3 and counts["done"] == 0
    with database(pipeline_settings) as sessions, session_scope(sessions) as session:
        waiting, _ = repository.reviews(session, limit=500)
        assert {d.batch_id for d in waiting} >= {reviewed}
        batch = repository.get_batch(session, batch_id=reviewed)
        assert batch is not None and repository.batch_state(batch.status, counts) == "finished"
    plain = _submit(pipeline_settings, uris)
    assert wait_for_batch(pipeline_settings, plain, worker=shared_worker)["done"] == 3
