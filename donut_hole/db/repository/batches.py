"""Batches: creating them, their documents, progress and states, listing, deleting, results."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    delete,
    func,
    or_,
    select,
)
from sqlalchemy.orm import Session

from donut_hole.db.models import (
    Batch,
    BatchStatus,
    CallbackStatus,
    Document,
    DocumentStatus,
    Extraction,
    Field,
    IdempotencyKey,
    new_id,
    source_uri,
    utcnow,
)
from donut_hole.db.repository.common import (
    ERROR_MAX,
    BatchBusy,
    BatchNotFound,
    DeletedBatch,
    FieldConfidences,
    FieldValues,
    Idempotency,
    InvalidInput,
    ResultRow,
    _batch_or_raise,
    _chunks,
    _clip,
    _dialect_insert,
    _pairs,
    _source_uri_sql,
    _threshold,
    is_id,
    put_field,
)
from donut_hole.db.repository.results import grouped, latest_extraction_ids

# ---------------------------------------------------------------------------------------------- batches


def create_batch(
    session: Session,
    *,
    source: str,
    uris: Sequence[str],
    sha256s: Sequence[str | None] | None = None,
    errors: Sequence[str | None] | None = None,
    expanding: bool = False,
    callback_url: str | None = None,
    idempotency: Idempotency | None = None,
    review_threshold: float | None = None,
) -> Batch:
    """A batch and one ``queued`` document per URI, in the caller's transaction.

    ``errors`` (one per URI, ``None`` for a good one) makes the documents that could not be taken at all
    (an empty or oversized file) ``failed`` from the start, with the reason: one bad file never stops
    the rest. ``expanding=True`` makes a batch whose documents a task will list later
    (:func:`add_documents`); it may start with no URIs. The returned batch's ``documents`` are in the
    order of ``uris``. ``callback_url`` (checked by the caller) is posted to once the batch is finished.
    ``idempotency`` records the request's key with the batch: a second batch under the same key fails the
    commit (IntegrityError), so of two racing requests only one batch is kept (:func:`find_idempotent`).
    """
    if not uris and not expanding:
        raise InvalidInput("a batch needs at least one document URI")
    pairs = _pairs(uris, sha256s)
    reasons = list(errors) if errors is not None else [None] * len(pairs)
    if len(reasons) != len(pairs):
        raise InvalidInput(f"{len(reasons)} errors for {len(pairs)} URIs")
    now = utcnow()
    batch = Batch(
        id=new_id(),
        source=source,
        status=BatchStatus.expanding if expanding else BatchStatus.accepted,
        callback_url=callback_url,
        callback_status=CallbackStatus.waiting.value if callback_url else None,
        review_threshold=_threshold(review_threshold),
        documents=[
            Document(id=new_id(), uri=uri, sha256=sha, status=DocumentStatus.queued)
            if reason is None
            else Document(
                id=new_id(),
                uri=uri,
                sha256=sha,
                status=DocumentStatus.failed,
                error=_clip(reason, ERROR_MAX),
                finished_at=now,
            )
            for (uri, sha), reason in zip(pairs, reasons, strict=True)
        ],
    )
    session.add(batch)
    if idempotency is not None:
        session.add(IdempotencyKey(batch_id=batch.id, **idempotency._asdict()))
    session.flush()
    return batch


def first_pages(session: Session, *, batch_id: str) -> list[Document]:
    """Each source file's first document (page 1, or a file not opened yet) in the batch, by URI."""
    documents = list(
        session.scalars(
            select(Document)
            .where(Document.batch_id == batch_id, or_(Document.page.is_(None), Document.page == 1))
            .order_by(Document.uri, Document.id)
        )
    )
    if not documents:
        raise BatchNotFound(batch_id)
    return documents


def find_idempotent(session: Session, *, key_sha256: str) -> IdempotencyKey | None:
    """The batch recorded under a request's ``Idempotency-Key`` digest, if a request already used it."""
    return session.get(IdempotencyKey, key_sha256)


def forget_idempotent(session: Session, *, batch_id: str) -> None:
    """Free the key a batch was made under (its upload never reached the store: a retry must try again)."""
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.batch_id == batch_id))


def add_documents(
    session: Session, *, batch_id: str, uris: Sequence[str], sha256s: Sequence[str | None] | None = None
) -> list[str]:
    """Add ``queued`` documents to a batch, skipping URIs it already holds; safe to call again.

    Returns the ids of the given URIs' documents that are still ``queued`` (new or not), in ``uris`` order:
    the ones to send to the queue, so that a retried listing re-sends rather than loses messages.
    """
    _batch_or_raise(session, batch_id)
    pairs = _pairs(uris, sha256s)
    if not pairs:
        return []
    now = utcnow()
    rows = [
        {
            "id": new_id(),
            "batch_id": batch_id,
            "uri": uri,
            "sha256": sha,
            "status": DocumentStatus.queued,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        for uri, sha in pairs
    ]
    stmt = _dialect_insert(session, Document).on_conflict_do_nothing(index_elements=["batch_id", "uri"])
    session.execute(stmt, rows)
    queued: dict[str, str] = {}
    for chunk in _chunks([uri for uri, _ in pairs]):
        found = session.execute(
            select(Document.uri, Document.id).where(
                Document.batch_id == batch_id,
                Document.uri.in_(chunk),
                Document.status == DocumentStatus.queued,
            )
        )
        queued.update({uri: doc_id for uri, doc_id in found})
    return [queued[uri] for uri, _ in pairs if uri in queued]


def set_batch_status(
    session: Session, *, batch_id: str, status: BatchStatus, error: str | None = None
) -> Batch:
    """Record the end of a batch's listing: ``accepted``, or ``failed`` with a reason."""
    batch = _batch_or_raise(session, batch_id)
    batch.status = BatchStatus(status)
    batch.error = _clip(error, ERROR_MAX)
    session.flush()
    return batch


UNFINISHED = (DocumentStatus.queued, DocumentStatus.processing)
"""The statuses of a document still on its way: a batch with none of them (and its listing over) is
finished. The one definition, in SQL (:func:`finished_sql`) and on counts (:func:`batch_state`)."""


def finished_sql() -> ColumnElement[bool]:
    """SQL of a ``Batch`` row: its listing is over and none of its documents is :data:`UNFINISHED`."""
    pending = select(Document.id).where(Document.batch_id == Batch.id, Document.status.in_(UNFINISHED))
    return and_(Batch.status != BatchStatus.expanding, ~pending.exists())


def batch_state(status: BatchStatus | str, progress: dict[str, int]) -> str:
    """A batch's state as users see it: ``expanding`` (listing), ``accepted`` (documents waiting or being
    read), ``finished`` (every document done or failed), ``failed`` (the listing failed). The stored status
    only says whether the rows are all written; ``finished`` comes from the counts.

    >>> batch_state("accepted", {"queued": 0, "processing": 0, "done": 3, "failed": 1, "total": 4})
    'finished'
    """
    value = BatchStatus(status).value
    if value == BatchStatus.accepted.value and not any(progress.get(s.value) for s in UNFINISHED):
        return "finished"
    return value


def batch_progress(session: Session, *, batch_id: str) -> dict[str, int]:
    """Documents per status and in total.

    ``{"queued": 1, "processing": 0, "done": 2, "failed": 1, "total": 4}``
    """
    _batch_or_raise(session, batch_id)
    return batches_progress(session, batch_ids=[batch_id])[batch_id]


def batches_progress(session: Session, *, batch_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """:func:`batch_progress` of several batches, in one query per chunk of ids (zeros for an empty one)."""
    progress = {batch_id: {status.value: 0 for status in DocumentStatus} for batch_id in batch_ids}
    for chunk in _chunks(list(progress)):
        rows = session.execute(
            select(Document.batch_id, Document.status, func.count())
            .where(Document.batch_id.in_(chunk))
            .group_by(Document.batch_id, Document.status)
        )
        for batch_id, status, count in rows:
            progress[batch_id][DocumentStatus(status).value] = count
    for counts in progress.values():
        counts["total"] = sum(counts.values())
    return progress


def list_batches(
    session: Session,
    *,
    limit: int,
    offset: int = 0,
    finished: bool | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> tuple[int, list[Batch]]:
    """How many batches match, and one page of them, newest first. ``finished``: only batches with nothing
    listed, queued or being read (True), or only those with work under way (False); the dates bound
    ``created_at`` (after: inclusive, before: exclusive)."""
    where: list[ColumnElement[bool]] = []
    if finished is not None:
        where.append(finished_sql() if finished else ~finished_sql())
    if created_after is not None:
        where.append(Batch.created_at >= created_after)
    if created_before is not None:
        where.append(Batch.created_at < created_before)
    total = session.scalar(select(func.count()).select_from(Batch).where(*where)) or 0
    page = session.scalars(
        select(Batch)
        .where(*where)
        .order_by(Batch.created_at.desc(), Batch.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return total, list(page)


def finished_batches(session: Session, *, created_before: datetime, limit: int | None = 1000) -> list[str]:
    """Ids of batches created before ``created_before`` with nothing queued or being read, oldest first."""
    return list(
        session.scalars(
            select(Batch.id)
            .where(Batch.created_at < created_before, finished_sql())
            .order_by(Batch.created_at, Batch.id)
            .limit(limit)
        )
    )


def delete_batch(session: Session, *, batch_id: str) -> DeletedBatch:
    """Delete a finished batch: its row, its documents, their extractions and fields, its idempotency keys.

    Raises :class:`BatchNotFound`, or :class:`BatchBusy` while its listing or any of its documents is under
    way (so no worker's result is thrown away). The batch row is locked (``FOR UPDATE`` on PostgreSQL) until
    the transaction ends; a document queued again meanwhile (``retry-failed``) finds no row and is dropped
    by the worker. Nothing is deleted from the object store here: the caller deletes the ``sources`` it owns
    that no other batch reads (:func:`still_read`) before it commits.
    """
    batch = (
        session.scalars(select(Batch).where(Batch.id == batch_id).with_for_update()).one_or_none()
        if is_id(batch_id)
        else None
    )
    if batch is None:
        raise BatchNotFound(batch_id)
    if batch.status == BatchStatus.expanding:
        raise BatchBusy(batch_id, pending=-1)
    progress = batches_progress(session, batch_ids=[batch_id])[batch_id]
    pending = progress[DocumentStatus.queued.value] + progress[DocumentStatus.processing.value]
    if pending:
        raise BatchBusy(batch_id, pending=pending)
    rows = session.execute(select(Document.uri, Document.page).where(Document.batch_id == batch_id))
    sources = sorted({source_uri(uri, page=page) for uri, page in rows})
    session.execute(delete(Batch).where(Batch.id == batch_id))  # the rest goes by ON DELETE CASCADE
    session.flush()
    session.expunge(batch)
    return DeletedBatch(batch_id, progress["total"], sources)


def still_read(session: Session, *, uris: Sequence[str]) -> set[str]:
    """Those of ``uris`` that a document (of any batch) reads: as its own URI, or as page 1 of its source."""
    found: set[str] = set()
    for chunk in _chunks(list(uris)):
        found.update(session.scalars(select(Document.uri).where(Document.uri.in_(chunk)).distinct()))
    return found


def batch_documents(session: Session, *, batch_id: str) -> list[Document]:
    """The batch's documents alone (no extraction read), in the order of :func:`results_for_batch`."""
    _batch_or_raise(session, batch_id)
    order = (_source_uri_sql(), Document.page, Document.id)
    return list(session.scalars(select(Document).where(Document.batch_id == batch_id).order_by(*order)))


def results_for_batch(
    session: Session, *, batch_id: str, limit: int | None = None, offset: int = 0
) -> list[ResultRow]:
    """One :class:`ResultRow` per document of the batch, ordered by source URI then page; three queries.

    ``limit`` and ``offset`` pick one page of that order in SQL: only that page's documents, extractions
    and fields are read, so paging through a large batch costs each page its own size.
    """
    _batch_or_raise(session, batch_id)
    order = (_source_uri_sql(), Document.page, Document.id)
    page = select(Document.id).where(Document.batch_id == batch_id).order_by(*order)
    if offset:
        page = page.offset(offset)
    if limit is not None:
        page = page.limit(limit)
    documents = session.scalars(select(Document).where(Document.id.in_(page)).order_by(*order))
    in_batch = latest_extraction_ids(Extraction.document_id.in_(page))
    latest: dict[str, Any] = {}  # document id -> its latest extraction row (id, model_id, confidence, note)
    extractions = session.execute(
        select(
            Extraction.document_id,
            Extraction.id,
            Extraction.model_id,
            Extraction.confidence,
            Extraction.note,
            Extraction.data,
            Extraction.reviewer,
        ).where(Extraction.id.in_(in_batch))
    )
    for row in extractions:
        latest[row.document_id] = row
    fields: dict[int, FieldValues] = {}
    confidences: dict[int, FieldConfidences] = {}
    box_rows: dict[int, list[tuple[str, Any]]] = {}
    field_rows = session.execute(
        select(Field.extraction_id, Field.name, Field.value, Field.confidence, Field.box)
        .where(Field.extraction_id.in_(in_batch))
        .order_by(Field.id)
    )
    for extraction_id, name, value, confidence, box in field_rows:
        put_field(fields.setdefault(extraction_id, {}), name, value)
        put_field(confidences.setdefault(extraction_id, {}), name, confidence)
        box_rows.setdefault(extraction_id, []).append((name, box))
    rows: list[ResultRow] = []
    for document in documents:
        found = latest.get(document.id)
        rows.append(
            ResultRow(
                document_id=document.id,
                uri=document.uri,
                page=document.page,
                page_count=document.page_count,
                status=DocumentStatus(document.status).value,
                error=document.error,
                attempts=document.attempts,
                model_id=found.model_id if found else None,
                confidence=found.confidence if found else None,
                note=found.note if found else None,
                fields=fields.get(found.id, {}) if found else {},
                field_confidence=confidences.get(found.id, {}) if found else {},
                field_boxes=grouped(box_rows.get(found.id, [])) if found else {},
                reviewed_by=found.reviewer if found else None,
                data=found.data if found else None,
            )
        )
    return rows
