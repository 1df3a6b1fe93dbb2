"""Documents: reading state, pages, sending, retries and failures."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import (
    and_,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from donut_hole.db.models import (
    Document,
    DocumentStatus,
    new_id,
    page_uri,
    utcnow,
)
from donut_hole.db.repository.common import (
    _CHUNK,
    ERROR_MAX,
    InvalidInput,
    _batch_or_raise,
    _chunks,
    _clip,
    _dialect_insert,
    _lock_document,
    is_id,
)

# -------------------------------------------------------------------------------------------- documents


def get_document(session: Session, *, document_id: str) -> Document | None:
    return session.get(Document, document_id) if is_id(document_id) else None


def add_pages(session: Session, *, document_id: str, page_count: int, source_sha256: str) -> list[str]:
    """Record what a worker found in a document's source, and add a ``queued`` row per further page.

    The document (page 1 of its source) gets ``page_count`` and ``source_sha256``; pages 2 to
    ``page_count`` become documents of the same batch with the URI ``<uri>#page=<k>`` (:func:`page_uri`),
    the same ``page_count`` and ``source_sha256``, and no ``sent_at`` (a watchdog sends them if the caller
    cannot). Safe to call again (a redelivered message): existing pages are not added twice. Returns the
    ids of the further pages that are still ``queued``, in page order, for the caller to send.
    """
    document = set_source(
        session, document_id=document_id, page_count=page_count, source_sha256=source_sha256
    )
    if document.page != 1:
        raise InvalidInput(f"document {document_id!r} is page {document.page}, not the first of its source")
    if page_count < 2:
        return []
    now = utcnow()
    uris = {page_uri(document.uri, page=page): page for page in range(2, page_count + 1)}
    rows = [
        {
            "id": new_id(),
            "batch_id": document.batch_id,
            "uri": uri,
            "status": DocumentStatus.queued,
            "attempts": 0,
            "page": page,
            "page_count": page_count,
            "source_sha256": source_sha256,
            "created_at": now,
            "updated_at": now,
        }
        for uri, page in uris.items()
    ]
    for chunk in range(0, len(rows), _CHUNK):
        stmt = _dialect_insert(session, Document).on_conflict_do_nothing(index_elements=["batch_id", "uri"])
        session.execute(stmt, rows[chunk : chunk + _CHUNK])
    queued: dict[int, str] = {}
    for chunk_uris in _chunks(list(uris)):
        found = session.execute(
            select(Document.uri, Document.page, Document.id).where(
                Document.batch_id == document.batch_id,
                Document.uri.in_(chunk_uris),
                Document.status == DocumentStatus.queued,
            )
        )
        # an object that happens to be named "<uri>#page=<k>" in the same batch is not one of the pages
        queued.update({page: doc_id for uri, page, doc_id in found if uris[uri] == page})
    return [queued[page] for page in sorted(queued)]


def set_source(session: Session, *, document_id: str, page_count: int, source_sha256: str) -> Document:
    """Record the page count and sha256 of the source file a worker read for this document."""
    document = _lock_document(session, document_id)
    document.page_count = page_count
    document.source_sha256 = source_sha256
    session.flush()
    return document


def pages_of(session: Session, *, document: Document) -> list[Document]:
    """Every page of ``document``'s source in its batch (itself included), in page order."""
    if not document.page_count or document.page_count < 2:
        return [document]
    source = document.source_uri
    uris = [page_uri(source, page=page) for page in range(1, document.page_count + 1)]
    pages: list[Document] = []
    for chunk in _chunks(uris):
        pages.extend(
            session.scalars(
                select(Document).where(Document.batch_id == document.batch_id, Document.uri.in_(chunk))
            )
        )
    return sorted((p for p in pages if page_uri(source, page=p.page) == p.uri), key=lambda p: p.page)


def mark_processing(session: Session, *, document_id: str, count: bool = True) -> Document:
    """Start an attempt: status ``processing``, ``attempts`` + 1, ``started_at`` now, old error cleared.

    It does not look at the current status; a task that must not redo finished work checks it first.
    ``count=False`` goes on with an attempt already counted (a retry after a database error).
    """
    document = _lock_document(session, document_id)
    document.status = DocumentStatus.processing
    if count:
        document.attempts = Document.attempts + 1  # in SQL, so that concurrent attempts all count
    document.started_at = utcnow()
    document.finished_at = None
    document.error = None
    session.flush()
    session.refresh(document, ["attempts"])
    return document


def mark_retrying(session: Session, *, document_id: str, reason: str) -> Document:
    """The attempt hit a passing failure: back to ``queued`` until the retry, with the reason in ``error``.

    The attempt ended cleanly, so it is given back (``attempts`` - 1): ``attempts`` counts the attempts
    that ended without an outcome (a worker that died), and an outage of any length retried within the
    budget never makes a document give up. ``sent_at`` is now: the retry's message goes out next.
    """
    document = _lock_document(session, document_id)
    document.status = DocumentStatus.queued
    document.error = _clip(f"retrying after attempt {document.attempts}: {reason}", ERROR_MAX)
    document.attempts = max(0, document.attempts - 1)
    document.sent_at = utcnow()
    session.flush()
    return document


def mark_sent(session: Session, *, document_ids: Sequence[str]) -> int:
    """``sent_at`` = now for documents whose message the broker took; returns how many rows changed.

    The rows are locked first in id order (``SELECT ... ORDER BY id FOR UPDATE``), the order a worker's
    claim locks them in: an ``UPDATE ... WHERE id IN (...)`` locks them in the order it finds them, and
    against a worker claiming some of the same documents that was a deadlock on PostgreSQL.
    """
    changed = 0
    now = utcnow()
    for chunk in _chunks(sorted(set(document_ids))):
        session.execute(
            select(Document.id).where(Document.id.in_(chunk)).order_by(Document.id).with_for_update()
        )
        result = session.execute(
            update(Document)
            .where(Document.id.in_(chunk))
            .values(sent_at=now)
            .execution_options(synchronize_session=False)
        )
        changed += int(getattr(result, "rowcount", 0) or 0)
    return changed


def requeue_stalled(
    session: Session,
    *,
    started_before: datetime,
    waiting_before: datetime | None = None,
    unsent_before: datetime | None = None,
    reason: str,
) -> list[tuple[str, str]]:
    """Documents no worker is reading any more, to be sent again: returns ``(document_id, batch_id)`` pairs.

    They are the ``processing`` ones whose attempt started before ``started_before``; with
    ``waiting_before``, the ``queued`` ones whose last message went out before then (``sent_at``: waiting
    for a retry whose worker vanished, or a message whose sender gave up during an outage), or, for rows
    older than ``sent_at``, untouched since then after an attempt; with ``unsent_before``, the ``queued``
    ones never sent (``sent_at`` null: the broker was down when they were stored) and older than that.
    They become ``queued`` with ``reason`` in ``error`` and ``sent_at`` now (the caller sends them before
    it commits). One conditional ``UPDATE`` does it, so when several workers look at the same time each
    document is taken by one of them only. ``attempts`` is kept: the next claim counts the new attempt
    and gives up after ``max_retries + 1`` of them.
    """
    stalled = and_(Document.status == DocumentStatus.processing, Document.started_at < started_before)
    queued = Document.status == DocumentStatus.queued
    if waiting_before is not None:
        sent_long_ago = and_(queued, Document.sent_at.is_not(None), Document.sent_at < waiting_before)
        tried_long_ago = and_(
            queued, Document.sent_at.is_(None), Document.attempts > 0, Document.updated_at < waiting_before
        )
        stalled = or_(stalled, sent_long_ago, tried_long_ago)
    if unsent_before is not None:
        never_sent = and_(
            queued, Document.sent_at.is_(None), Document.attempts == 0, Document.updated_at < unsent_before
        )
        stalled = or_(stalled, never_sent)
    now = utcnow()
    rows = session.execute(
        update(Document)
        .where(stalled)
        .values(status=DocumentStatus.queued, error=_clip(reason, ERROR_MAX), updated_at=now, sent_at=now)
        .returning(Document.id, Document.batch_id)
        .execution_options(synchronize_session=False)
    ).all()
    return [(document_id, batch_id) for document_id, batch_id in rows]


TRANSIENT = "transient: "
"""How ``documents.error`` begins when a document failed for a passing reason (an outage past the retry
budget): :func:`requeue_transient_failures` (``donut-hole enqueue --retry-failed``) queues it again."""
NOT_UPLOADED = "not uploaded: "
"""The reason of a document whose file the submitter could not put in the store: nothing to read, so
:func:`requeue_transient_failures` leaves it (its file must be enqueued again)."""


def requeue_transient_failures(session: Session, *, batch_id: str) -> list[str]:
    """The batch's documents ``failed`` for a transient reason back to ``queued`` (``sent_at`` now,
    ``attempts`` 0, the old reason kept after ``queued again:``); returns their ids, for the caller to send
    before it commits. :class:`BatchNotFound` when there is no such batch."""
    _batch_or_raise(session, batch_id)
    now = utcnow()
    rows = session.execute(
        update(Document)
        .where(
            Document.batch_id == batch_id,
            Document.status == DocumentStatus.failed,
            Document.error.startswith(TRANSIENT, autoescape=True),
        )
        .values(
            status=DocumentStatus.queued,
            error=func.substr("queued again after: " + Document.error, 1, ERROR_MAX),
            attempts=0,
            finished_at=None,
            updated_at=now,
            sent_at=now,
        )
        .returning(Document.id)
        .execution_options(synchronize_session=False)
    ).all()
    return sorted(document_id for (document_id,) in rows)


def mark_failed(session: Session, *, document_id: str, error: str) -> Document:
    """End the document as ``failed`` with a reason a user can read (clipped to ``ERROR_MAX`` characters)."""
    document = _lock_document(session, document_id)
    document.status = DocumentStatus.failed
    document.error = _clip(error, ERROR_MAX) or "unknown error"
    document.finished_at = utcnow()
    session.flush()
    return document
