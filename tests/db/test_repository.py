"""Repository functions against SQLite and PostgreSQL (the ``db_url`` fixture runs each test on both)."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from donut_hole.db import (
    Batch,
    BatchStatus,
    Document,
    DocumentStatus,
    Extraction,
    Field,
    repository,
    session_scope,
)
from donut_hole.db.models import FIELD_VALUE_MAX, IdempotencyKey, utcnow

Factory = sessionmaker[Session]


def _batch(factory: Factory, uris: list[str], **kwargs: Any) -> tuple[str, list[str]]:
    with session_scope(factory) as session:
        batch = repository.create_batch(session, source="test", uris=uris, **kwargs)
        return batch.id, [document.id for document in batch.documents]


def _model(factory: Factory, name: str = "donut-hole-small", sha256: str = "a" * 64) -> int:
    with session_scope(factory) as session:
        return repository.get_or_create_model(session, name=name, path=f"/models/{name}", sha256=sha256).id


def _save(
    factory: Factory, document_id: str, model_id: int, fields: list[tuple[str, str, float | None]]
) -> int:
    with session_scope(factory) as session:
        extraction = repository.save_extraction(
            session,
            document_id=document_id,
            model_id=model_id,
            raw_sequence="<s_name>x</s_name>",
            data={name: value for name, value, _ in fields},
            confidence=0.9,
            latency_ms=12.5,
            fields=fields,
        )
        return extraction.id


def _count(factory: Factory, entity: type[Any]) -> int:
    with session_scope(factory) as session:
        return session.scalar(select(func.count()).select_from(entity)) or 0


def test_create_batch_writes_queued_documents_in_one_transaction(factory: Factory) -> None:
    batch_id, document_ids = _batch(
        factory, ["s3://scans/b.png", "s3://scans/a.png"], sha256s=["1" * 64, None]
    )

    with session_scope(factory) as session:
        batch = repository.get_batch(session, batch_id=batch_id)
        assert batch is not None and batch.status == BatchStatus.accepted and batch.source == "test"
        first = repository.get_document(session, document_id=document_ids[0])
        assert first is not None
        assert (first.uri, first.sha256, first.status, first.attempts) == (
            "s3://scans/b.png",
            "1" * 64,
            "queued",
            0,
        )
        assert first.created_at.tzinfo is not None
        assert repository.batch_progress(session, batch_id=batch_id) == {
            "queued": 2,
            "processing": 0,
            "done": 0,
            "failed": 0,
            "needs_review": 0,
            "total": 2,
        }


@pytest.mark.parametrize(
    ("uris", "sha256s", "message"),
    [
        ([], None, "at least one"),
        (["s3://a/x", "s3://a/x"], None, "twice"),
        (["s3://a/x"], ["1", "2"], "sha256"),
        ([""], None, "empty"),
    ],
)
def test_create_batch_rejects_bad_input_and_writes_nothing(
    factory: Factory, uris: list[str], sha256s: list[str] | None, message: str
) -> None:
    with pytest.raises(repository.InvalidInput, match=message), session_scope(factory) as session:
        repository.create_batch(session, source="test", uris=uris, sha256s=sha256s)
    assert _count(factory, Batch) == 0
    assert _count(factory, Document) == 0


def test_expanding_batch_adds_documents_idempotently(factory: Factory) -> None:
    batch_id, _ = _batch(factory, [], expanding=True)
    with session_scope(factory) as session:
        first = repository.add_documents(session, batch_id=batch_id, uris=["s3://a/1", "s3://a/2"])
    with session_scope(factory) as session:
        repository.mark_processing(session, document_id=first[0])
    with session_scope(factory) as session:  # a retried listing: nothing duplicated, still-queued ids again
        again = repository.add_documents(
            session, batch_id=batch_id, uris=["s3://a/1", "s3://a/2", "s3://a/3"]
        )
        repository.set_batch_status(session, batch_id=batch_id, status=BatchStatus.accepted)
    assert len(again) == 2 and again[0] == first[1]
    with session_scope(factory) as session:
        assert repository.batch_progress(session, batch_id=batch_id)["total"] == 3
        batch = repository.get_batch(session, batch_id=batch_id)
        assert batch is not None and batch.status == BatchStatus.accepted


def test_mark_processing_counts_attempts(factory: Factory) -> None:
    _, (document_id,) = _batch(factory, ["s3://scans/a.png"])
    for _ in range(2):
        with session_scope(factory) as session:
            document = repository.mark_processing(session, document_id=document_id)
    assert document.status == DocumentStatus.processing
    assert document.attempts == 2
    assert document.started_at is not None and document.started_at.tzinfo is not None


def test_save_extraction_twice_keeps_one_row_and_replaces_fields(factory: Factory) -> None:
    batch_id, (document_id,) = _batch(factory, ["s3://scans/a.png"])
    model_id = _model(factory)
    first = _save(factory, document_id, model_id, [("shipper.name", "ACME", 0.9), ("weight", "12 kg", 0.8)])
    second = _save(factory, document_id, model_id, [("shipper.name", "ACME Ltd", 0.95)])

    assert first == second
    assert _count(factory, Extraction) == 1
    with session_scope(factory) as session:
        fields = session.execute(select(Field.name, Field.value)).all()
        assert [tuple(row) for row in fields] == [("shipper.name", "ACME Ltd")]
        extraction = session.get(Extraction, first)
        assert extraction is not None and extraction.data == {"shipper.name": "ACME Ltd"}
        document = repository.get_document(session, document_id=document_id)
        assert document is not None and document.status == DocumentStatus.done and document.finished_at
        assert repository.batch_progress(session, batch_id=batch_id)["done"] == 1


def test_save_extraction_returns_loaded_fields(factory: Factory) -> None:
    _, (document_id,) = _batch(factory, ["s3://scans/a.png"])
    model_id = _model(factory)
    with session_scope(factory) as session:
        extraction = repository.save_extraction(
            session,
            document_id=document_id,
            model_id=model_id,
            raw_sequence="",
            data={},
            confidence=None,
            latency_ms=None,
            fields=[("a", "1", None)],
        )
    assert [(f.name, f.value) for f in extraction.fields] == [("a", "1")]  # usable after the session closed


def test_concurrent_saves_of_one_key_leave_one_extraction(factory: Factory) -> None:
    _, (document_id,) = _batch(factory, ["s3://scans/a.png"])
    model_id = _model(factory)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def save(worker: int) -> None:
        try:
            barrier.wait()
            _save(factory, document_id, model_id, [("worker", str(worker), None), ("n", "x", None)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert _count(factory, Extraction) == 1
    assert _count(factory, Field) == 2


def test_mark_failed_records_the_reason_and_the_batch_goes_on(factory: Factory) -> None:
    batch_id, (bad, good, waiting) = _batch(factory, ["s3://a/bad", "s3://a/good", "s3://a/waiting"])
    model_id = _model(factory)
    with session_scope(factory) as session:
        repository.mark_processing(session, document_id=bad)
        repository.mark_failed(session, document_id=bad, error="object s3://a/bad does not exist")
    _save(factory, good, model_id, [("x", "1", None)])
    with session_scope(factory) as session:
        repository.mark_processing(session, document_id=waiting)

    with session_scope(factory) as session:
        document = repository.get_document(session, document_id=bad)
        assert document is not None
        assert (document.status, document.error) == ("failed", "object s3://a/bad does not exist")
        assert document.finished_at is not None
        progress = repository.batch_progress(session, batch_id=batch_id)
    assert progress == {"queued": 0, "processing": 1, "done": 1, "failed": 1, "needs_review": 0, "total": 3}


def test_a_retry_after_failure_clears_the_error(factory: Factory) -> None:
    _, (document_id,) = _batch(factory, ["s3://a/x"])
    with session_scope(factory) as session:
        repository.mark_failed(session, document_id=document_id, error="x" * 10_000)
    with session_scope(factory) as session:
        document = repository.get_document(session, document_id=document_id)
        assert document is not None and document.error is not None
        assert len(document.error) == repository.ERROR_MAX
        document = repository.mark_processing(session, document_id=document_id)
        assert document.error is None and document.finished_at is None


def test_requeue_stalled_takes_back_old_processing_and_retrying_documents_once(factory: Factory) -> None:
    uris = ["s3://a/old", "s3://a/fresh", "s3://a/done", "s3://a/new", "s3://a/retry", "s3://a/retry-soon"]
    batch_id, (old, fresh, done, new, retry, retry_soon) = _batch(factory, uris)
    hour_ago = utcnow() - timedelta(hours=1)
    with session_scope(factory) as session:
        for document_id in (old, fresh, done, retry, retry_soon):
            repository.mark_processing(session, document_id=document_id)
        for document_id in (retry, retry_soon):
            repository.mark_retrying(session, document_id=document_id, reason="S3 unreachable")
    _save(factory, done, _model(factory), [("x", "1", None)])
    with session_scope(factory) as session:
        for document_id in (old, done):
            repository.get_document(session, document_id=document_id).started_at = hour_ago
        for document_id in (retry, new):  # untouched for an hour: waiting for a retry, and never sent
            session.execute(update(Document).where(Document.id == document_id).values(updated_at=hour_ago))
        session.execute(update(Document).where(Document.id == retry).values(sent_at=hour_ago))
    cutoffs = {
        "started_before": utcnow() - timedelta(minutes=10),
        "waiting_before": utcnow() - timedelta(minutes=15),
    }

    with session_scope(factory) as session:
        taken = repository.requeue_stalled(session, **cutoffs, reason="sent again")
    with session_scope(factory) as session:
        again = repository.requeue_stalled(session, **cutoffs, reason="sent again")
        states = {
            d.id: (d.status.value, d.error, d.attempts)
            for d in (
                repository.get_document(session, document_id=i)
                for i in (old, fresh, done, new, retry, retry_soon)
            )
        }

    assert sorted(taken) == sorted([(old, batch_id), (retry, batch_id)]) and again == []
    assert states == {
        old: ("queued", "sent again", 1),  # the next claim counts the next attempt
        fresh: ("processing", None, 1),
        done: ("done", None, 1),
        new: ("queued", None, 0),  # never sent: taken only with unsent_before (see the next test)
        retry: ("queued", "sent again", 0),  # an attempt that ended in a retry is given back
        retry_soon: ("queued", "retrying after attempt 1: S3 unreachable", 0),
    }


def test_requeue_stalled_takes_documents_never_sent_and_requeue_transient_failures(factory: Factory) -> None:
    uris = ["s3://a/unsent", "s3://a/just-stored", "s3://a/sent", "s3://a/transient", "s3://a/corrupt"]
    batch_id, (unsent, just_stored, sent, transient, corrupt) = _batch(factory, uris)
    minute_ago = utcnow() - timedelta(minutes=1)
    with session_scope(factory) as session:
        session.execute(update(Document).where(Document.id != just_stored).values(updated_at=minute_ago))
        repository.mark_sent(session, document_ids=[sent])
        repository.mark_failed(session, document_id=transient, error="transient: S3 down for 1200 s")
        repository.mark_failed(session, document_id=corrupt, error="corrupt image: truncated")
    cutoffs = {"started_before": utcnow(), "unsent_before": utcnow() - timedelta(seconds=30)}
    with session_scope(factory) as session:
        taken = repository.requeue_stalled(session, **cutoffs, reason="sent again")
        retried = repository.requeue_transient_failures(session, batch_id=batch_id)
    assert taken == [(unsent, batch_id)] and retried == [transient]
    with session_scope(factory) as session:
        document = repository.get_document(session, document_id=transient)
        assert document.status.value == "queued" and document.sent_at is not None
        assert document.error == "queued again after: transient: S3 down for 1200 s"
        assert repository.get_document(session, document_id=corrupt).status.value == "failed"
        with pytest.raises(repository.BatchNotFound):
            repository.requeue_transient_failures(session, batch_id="nope")


def test_search_fields_finds_documents_once(factory: Factory) -> None:
    _, (a, b, c) = _batch(factory, ["s3://s/a", "s3://s/b", "s3://s/c"])
    small, large = _model(factory), _model(factory, name="teacher", sha256="b" * 64)
    _save(factory, a, small, [("consignee.name", "Jane Doe", 0.9), ("ref", "R1", 0.9)])
    _save(factory, a, large, [("consignee.name", "Jane Doe", 0.99)])  # second model: still one document
    _save(factory, b, small, [("consignee.name", "John Roe", 0.9)])
    _save(factory, c, small, [("shipper.name", "Jane Doe", 0.9)])

    with session_scope(factory) as session:
        found = repository.search_fields(session, name="consignee.name", value="Jane Doe")
        assert [document.id for document in found] == [a]
        assert repository.search_fields(session, name="consignee.name", value="nobody") == []
        with pytest.raises(repository.InvalidInput):
            repository.search_fields(session, name="x", value="y", limit=0)


def test_long_values_are_clipped_for_search_but_kept_in_data(factory: Factory) -> None:
    _, (document_id,) = _batch(factory, ["s3://s/a"])
    long_value = "é" * 5000  # beyond PostgreSQL's B-tree row limit if stored whole
    _save(factory, document_id, _model(factory), [("notes", long_value, None)])
    with session_scope(factory) as session:
        assert [d.id for d in repository.search_fields(session, name="notes", value=long_value)] == [
            document_id
        ]
        stored = session.scalar(select(Field.value))
        assert stored == long_value[:FIELD_VALUE_MAX]
        assert session.scalar(select(Extraction.data)) == {"notes": long_value}


def test_results_for_batch_are_table_rows(factory: Factory) -> None:
    batch_id, (a, b, c) = _batch(factory, ["s3://s/a", "s3://s/b", "s3://s/c"])
    model_id = _model(factory)
    _save(
        factory, a, model_id, [("items.name", "bolt", 0.9), ("items.name", "nut", 0.8), ("total", "3", 1.0)]
    )
    with session_scope(factory) as session:
        repository.mark_failed(session, document_id=b, error="unreadable image")
    with session_scope(factory) as session:
        rows = repository.results_for_batch(session, batch_id=batch_id)
    assert [row["document_id"] for row in rows] == [a, b, c]
    assert rows[0]["fields"] == {"items.name": ["bolt", "nut"], "total": "3"}
    assert rows[0]["field_confidence"] == {"items.name": [0.9, 0.8], "total": 1.0}
    assert (rows[0]["status"], rows[0]["model_id"], rows[0]["confidence"]) == ("done", model_id, 0.9)
    assert (rows[1]["status"], rows[1]["error"], rows[1]["fields"]) == ("failed", "unreadable image", {})
    assert (rows[2]["status"], rows[2]["model_id"]) == ("queued", None)


def test_a_page_of_results_is_that_slice_of_all_results(factory: Factory) -> None:
    uris = [f"s3://s/{name}" for name in "edcba"]  # enqueued out of order: the results sort them
    batch_id, ids = _batch(factory, uris)
    model_id = _model(factory)
    for document_id, value in zip(ids[::2], "xyz", strict=True):
        _save(factory, document_id, model_id, [("total", value, 0.5)])
    with session_scope(factory) as session:
        everything = repository.results_for_batch(session, batch_id=batch_id)
        assert [row["uri"] for row in everything] == sorted(uris)
        for limit, offset in ((2, 0), (2, 2), (2, 4), (3, 1), (10, 0), (1, 5), (None, 3)):
            page = repository.results_for_batch(session, batch_id=batch_id, limit=limit, offset=offset)
            end = None if limit is None else offset + limit
            assert page == everything[offset:end], (limit, offset)


def test_results_use_the_latest_extraction(factory: Factory) -> None:
    batch_id, (document_id,) = _batch(factory, ["s3://s/a"])
    old, new = _model(factory), _model(factory, name="v2", sha256="c" * 64)
    _save(factory, document_id, old, [("x", "old", None)])
    _save(factory, document_id, new, [("x", "new", None)])
    with session_scope(factory) as session:
        (row,) = repository.results_for_batch(session, batch_id=batch_id)
        latest = repository.latest_extractions(session, document_ids=[document_id, "no-such-document"])
        assert set(latest) == {document_id}
        assert (latest[document_id].model_id, repository.field_values(latest[document_id])) == (
            new,
            {"x": "new"},
        )
    assert (row["model_id"], row["fields"]) == (new, {"x": "new"})
    _save(factory, document_id, old, [("x", "again", None)])  # written last: the latest one again
    with session_scope(factory) as session:
        (row,) = repository.results_for_batch(session, batch_id=batch_id)
        latest = repository.latest_extractions(session, document_ids=[document_id])
        assert latest[document_id].model_id == old
    assert (row["model_id"], row["fields"]) == (old, {"x": "again"})


def test_get_or_create_model_is_idempotent(factory: Factory) -> None:
    first = _model(factory)
    assert _model(factory) == first
    assert _model(factory, sha256="d" * 64) != first
    with session_scope(factory) as session:
        model = repository.get_or_create_model(
            session, name="m", path="/m", sha256="e" * 64, density=0.5, metrics={"f1": 0.9}
        )
        assert (model.density, model.metrics) == (0.5, {"f1": 0.9})


def test_missing_rows_raise_typed_errors(factory: Factory) -> None:
    with session_scope(factory) as session:
        assert repository.get_batch(session, batch_id="nope") is None
        assert repository.get_document(session, document_id="nope") is None
        with pytest.raises(repository.BatchNotFound, match="nope"):
            repository.batch_progress(session, batch_id="nope")
        with pytest.raises(repository.DocumentNotFound, match="nope"):
            repository.mark_processing(session, document_id="nope")
        with pytest.raises(repository.DocumentNotFound):
            repository.mark_failed(session, document_id="nope", error="x")


def test_deleting_a_batch_deletes_its_rows(factory: Factory) -> None:
    batch_id, (document_id,) = _batch(factory, ["s3://s/a"])
    _save(factory, document_id, _model(factory), [("x", "1", None)])
    with session_scope(factory) as session:
        session.delete(session.get(Batch, batch_id))
    assert [_count(factory, entity) for entity in (Document, Extraction, Field)] == [0, 0, 0]


def test_delete_batch_removes_a_finished_batch_and_names_the_sources_no_other_batch_reads(
    factory: Factory,
) -> None:
    model_id = _model(factory)
    batch_id, (pdf, label) = _batch(
        factory,
        ["s3://s/bol.pdf", "s3://s/label.png"],
        idempotency=repository.Idempotency("k" * 64, "r" * 64),
    )
    with session_scope(factory) as session:
        page_ids = repository.add_pages(session, document_id=pdf, page_count=2, source_sha256="b" * 64)
        repository.create_batch(session, source="test", uris=["s3://s/label.png", "s3://s/other.png"])
    for document_id in (pdf, *page_ids):
        _save(factory, document_id, model_id, [("x", "1", None)])
    with session_scope(factory) as session:
        repository.mark_failed(session, document_id=label, error="unreadable")

    with session_scope(factory) as session:
        deleted = repository.delete_batch(session, batch_id=batch_id)
    # the PDF's two pages are one source; the label is also read by the second batch
    assert deleted == repository.DeletedBatch(batch_id, 3, ["s3://s/bol.pdf", "s3://s/label.png"])
    with session_scope(factory) as session:
        assert repository.still_read(session, uris=deleted.sources) == {"s3://s/label.png"}
    with session_scope(factory) as session:
        assert repository.get_batch(session, batch_id=batch_id) is None
        assert (
            session.scalar(select(func.count()).select_from(Document).where(Document.batch_id == batch_id))
            == 0
        )
    counts = [_count(factory, entity) for entity in (Batch, Document, Extraction, Field, IdempotencyKey)]
    assert counts == [1, 2, 0, 0, 0]
    with session_scope(factory) as session, pytest.raises(repository.BatchNotFound):
        repository.delete_batch(session, batch_id=batch_id)


def test_a_batch_with_work_under_way_is_not_deleted(factory: Factory) -> None:
    batch_id, (first, second) = _batch(factory, ["s3://s/a", "s3://s/b"])
    _save(factory, first, _model(factory), [("x", "1", None)])
    with session_scope(factory) as session, pytest.raises(repository.BatchBusy, match="1 of its documents"):
        repository.delete_batch(session, batch_id=batch_id)
    with session_scope(factory) as session:
        repository.mark_processing(session, document_id=second)
    with session_scope(factory) as session, pytest.raises(repository.BatchBusy, match="queued or being read"):
        repository.delete_batch(session, batch_id=batch_id)
    with session_scope(factory) as session:
        listing = repository.create_batch(session, source="prefix", uris=[], expanding=True)
        listing_id = listing.id
    with session_scope(factory) as session, pytest.raises(repository.BatchBusy, match="still being listed"):
        repository.delete_batch(session, batch_id=listing_id)
    assert _count(factory, Batch) == 2 and _count(factory, Document) == 2


def test_finished_batches_are_those_created_before_the_cutoff_with_nothing_under_way(
    factory: Factory,
) -> None:
    old_done, (document,) = _batch(factory, ["s3://s/a"])
    _save(factory, document, _model(factory), [("x", "1", None)])
    old_queued, _ = _batch(factory, ["s3://s/b"])
    with session_scope(factory) as session:
        session.execute(update(Batch).values(created_at=utcnow() - timedelta(days=40)))
    new_done, (document,) = _batch(factory, ["s3://s/c"])
    _save(factory, document, _model(factory), [("x", "1", None)])
    with session_scope(factory) as session:
        cutoff = utcnow() - timedelta(days=30)
        assert repository.finished_batches(session, created_before=cutoff) == [old_done]
        assert repository.finished_batches(session, created_before=utcnow() + timedelta(seconds=1)) == [
            old_done,
            new_done,
        ]
    assert old_queued not in (old_done, new_done)


def test_marking_sent_and_claiming_lock_rows_in_one_order(factory: Factory, db_url: str) -> None:
    """An enqueuer marking documents sent while a worker claims two of them, the worker holding the row
    with the smaller id first: both finish (on PostgreSQL, rows locked in different orders deadlock)."""
    _, ids = _batch(factory, [f"s3://b/{i:02d}.jpg" for i in range(24)])
    # two rows whose order on disk (insertion) is not their id order: an unordered UPDATE meets the
    # larger id first
    first, second = next((a, b) for i, a in enumerate(ids) for b in ids[i + 1 :] if a > b)
    small, large = second, first
    holding, errors = threading.Event(), []

    def worker() -> None:
        try:
            with session_scope(factory) as session:
                repository.mark_processing(session, document_id=small)
                holding.set()
                threading.Event().wait(1.0)  # the enqueuer is waiting on ``small`` by now
                repository.mark_processing(session, document_id=large)
        except Exception as exc:  # a deadlock victim
            errors.append(exc)

    def enqueuer() -> None:
        holding.wait(10)
        try:
            with session_scope(factory) as session:
                repository.mark_sent(session, document_ids=[first, second])
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker), threading.Thread(target=enqueuer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    with session_scope(factory) as session:
        rows = [repository.get_document(session, document_id=i) for i in (small, large)]
        assert all(row.sent_at is not None and row.attempts == 1 for row in rows)
