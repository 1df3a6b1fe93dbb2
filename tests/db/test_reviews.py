"""Review in the database: routing a reading to needs_review, the queue of reviews, a reviewer's version."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from donut_hole.db import DocumentStatus, Extraction, repository, session_scope

Factory = sessionmaker[Session]
DATA = {"carrier": "DHL", "items": [{"sku": "A-1"}, {"sku": "B-2"}]}
FIELDS = [
    ("carrier", "DHL", 0.95, [0.1, 0.1, 0.3, 0.15]),
    ("items.sku", "A-1", 0.40, [0.1, 0.5, 0.2, 0.55]),
    ("items.sku", "B-2", 0.97, None),
]


def _read(
    factory: Factory, *, threshold: float | None, batch_threshold: float | None = None, **kw: Any
) -> str:
    with session_scope(factory) as session:
        batch = repository.create_batch(
            session, source="test", uris=["s3://b/a.png"], review_threshold=batch_threshold
        )
        document_id = batch.documents[0].id
        model_id = repository.get_or_create_model(session, name="m", path="/m", sha256="a" * 64).id
        repository.save_extraction(
            session,
            document_id=document_id,
            model_id=model_id,
            raw_sequence="",
            data=kw.get("data", DATA),
            confidence=0.9,
            latency_ms=1.0,
            fields=kw.get("fields", FIELDS),
            review_threshold=threshold,
        )
    return document_id


def _status(factory: Factory, document_id: str) -> DocumentStatus:
    with session_scope(factory) as session:
        document = repository.get_document(session, document_id=document_id)
        assert document is not None
        return DocumentStatus(document.status)


def test_a_field_below_the_threshold_sends_the_document_to_review(factory: Factory) -> None:
    assert _status(factory, _read(factory, threshold=None)) == DocumentStatus.done
    assert _status(factory, _read(factory, threshold=0.3)) == DocumentStatus.done
    assert _status(factory, _read(factory, threshold=0.5)) == DocumentStatus.needs_review
    # the batch's own threshold wins over the service's, both ways
    assert _status(factory, _read(factory, threshold=0.5, batch_threshold=0.3)) == DocumentStatus.done
    assert (
        _status(factory, _read(factory, threshold=None, batch_threshold=0.5)) == DocumentStatus.needs_review
    )
    # a reading with no field at all is not trusted either
    empty = _read(factory, threshold=0.5, data={}, fields=[])
    assert _status(factory, empty) == DocumentStatus.needs_review
    with session_scope(factory) as session, pytest.raises(repository.InvalidInput, match="between 0 and 1"):
        repository.create_batch(session, source="t", uris=["s3://b/x.png"], review_threshold=1.5)


def test_a_document_waiting_for_review_ends_its_batch_and_is_counted(factory: Factory) -> None:
    document_id = _read(factory, threshold=0.5)
    with session_scope(factory) as session:
        document = repository.get_document(session, document_id=document_id)
        assert document is not None
        progress = repository.batch_progress(session, batch_id=document.batch_id)
        assert progress["needs_review"] == 1 and progress["total"] == 1
        assert repository.batch_state(document.batch.status, progress) == "finished"


def test_reviews_are_listed_oldest_first_and_leave_the_list_when_reviewed(factory: Factory) -> None:
    first, second = _read(factory, threshold=0.5), _read(factory, threshold=0.5)
    _read(factory, threshold=None)  # done: not listed
    with session_scope(factory) as session:
        waiting, total = repository.reviews(session)
    assert [d.id for d in waiting] == [first, second] and total == 2
    with session_scope(factory) as session:
        repository.save_review(
            session,
            document_id=first,
            reviewer="ana",
            values=[("carrier", "DHL"), ("items.sku", "A-7"), ("items.sku", "B-2")],
        )
    with session_scope(factory) as session:
        waiting, total = repository.reviews(session)
    assert [d.id for d in waiting] == [second] and total == 1


def test_a_review_is_a_new_extraction_beside_the_models(factory: Factory) -> None:
    document_id = _read(factory, threshold=0.5)
    with session_scope(factory) as session:
        # pairs go by key path, and among a repeated path by order: the order of paths may differ
        repository.save_review(
            session,
            document_id=document_id,
            reviewer="ana",
            values=[("items.sku", "A-7"), ("carrier", 'DHL <script>"x"</script>'), ("items.sku", "B-2")],
        )
    with session_scope(factory) as session:
        rows = session.scalars(select(Extraction).where(Extraction.document_id == document_id)).all()
        model, review = sorted(rows, key=lambda e: e.id)
        assert model.source == "model" and model.data == DATA and model.reviewer is None
        assert review.source == "reviewer" and review.reviewer == "ana" and review.model_id is None
        assert review.data == {
            "carrier": 'DHL <script>"x"</script>',
            "items": [{"sku": "A-7"}, {"sku": "B-2"}],
        }
        latest = repository.latest_extractions(session, document_ids=[document_id])[document_id]
        assert latest.id == review.id
        assert repository.field_values(latest) == {
            "carrier": 'DHL <script>"x"</script>',
            "items.sku": ["A-7", "B-2"],
        }
        assert repository.field_confidences(latest) == {"carrier": 1.0, "items.sku": [1.0, 1.0]}
        assert repository.field_boxes(latest) == {
            "carrier": [0.1, 0.1, 0.3, 0.15],
            "items.sku": [[0.1, 0.5, 0.2, 0.55], None],
        }
    assert _status(factory, document_id) == DocumentStatus.done


def test_a_review_must_send_the_readings_fields(factory: Factory) -> None:
    document_id = _read(factory, threshold=0.5)
    for values in (
        [("carrier", "DHL"), ("items.sku", "A-1")],  # one missing
        [("carrier", "DHL"), ("items.sku", "A-1"), ("items.sku", "B-2"), ("weight", "2 kg")],  # one added
        [("shipper", "DHL"), ("items.sku", "A-1"), ("items.sku", "B-2")],  # another path
    ):
        with (
            session_scope(factory) as session,
            pytest.raises(repository.InvalidInput, match="not the reading"),
        ):
            repository.save_review(session, document_id=document_id, reviewer="ana", values=values)
    assert _status(factory, document_id) == DocumentStatus.needs_review
    with session_scope(factory) as session:
        batch = repository.create_batch(session, source="t", uris=["s3://b/unread.png"])
        unread = batch.documents[0].id
    with session_scope(factory) as session, pytest.raises(repository.InvalidInput, match="no reading"):
        repository.save_review(session, document_id=unread, reviewer="ana", values=[])
