"""Repository functions of the completion webhook: the ``batches.callback_*`` columns, as plain functions.

A batch with a callback goes ``waiting`` → ``due`` (it has no queued or processing document left and its
listing is over) → ``delivered``, or ``failed`` after ``callback_max_attempts`` tries. Every change is one
conditional ``UPDATE``, so concurrent workers and watchdogs agree without locks held across an HTTP call:

* :func:`mark_finished` moves finished batches to ``due`` (only one caller wins each batch);
* :func:`claim` counts a try before it is made and takes a lease on it (``callback_next_at`` moved past
  the try's longest duration), so two copies of a delivery message never post at the same time;
* :func:`record_try` ends the try: ``delivered`` (never sent again), a later try, or ``failed``.

Like :mod:`.repository`, these functions flush but never commit: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from donut_hole.db.models import Batch, CallbackStatus, Document, utcnow
from donut_hole.db.repository.batches import finished_sql

CALLBACK_ERROR_MAX = 500
LOST_TRY = "the last try did not end: its worker stopped during the POST"
_CHUNK = 500


def mark_finished(
    session: Session, *, document_ids: Sequence[str] | None = None, batch_ids: Sequence[str] | None = None
) -> list[str]:
    """``waiting`` → ``due`` for the finished batches among ``batch_ids`` and the batches of
    ``document_ids`` (all batches when both are None); their ids.

    Each batch is returned to one caller only: the one whose ``UPDATE`` changed it.
    """
    now = utcnow()
    where: list[ColumnElement[bool]] = [Batch.callback_status == CallbackStatus.waiting.value, finished_sql()]
    chunks: list[tuple[str, list[str]] | None] = []
    if document_ids is None and batch_ids is None:
        chunks.append(None)
    chunks += [("documents", chunk) for chunk in _chunks(list(document_ids or []))]
    chunks += [("batches", chunk) for chunk in _chunks(list(batch_ids or []))]
    changed: list[str] = []
    for chunk in chunks:
        conditions = list(where)
        if chunk is not None and chunk[0] == "documents":
            conditions.append(Batch.id.in_(select(Document.batch_id).where(Document.id.in_(chunk[1]))))
        elif chunk is not None:
            conditions.append(Batch.id.in_(chunk[1]))
        rows = session.execute(
            update(Batch)
            .where(*conditions)
            .values(callback_status=CallbackStatus.due.value, callback_next_at=now)
            .returning(Batch.id)
            .execution_options(synchronize_session=False)
        )
        changed.extend(batch_id for (batch_id,) in rows)
    return changed


def overdue(session: Session, *, before: datetime) -> list[str]:
    """``due`` batches whose next try should have started before ``before`` (its message was lost)."""
    return list(
        session.scalars(
            select(Batch.id).where(
                Batch.callback_status == CallbackStatus.due.value, Batch.callback_next_at < before
            )
        )
    )


def claim(
    session: Session, *, batch_id: str, lease_s: float, max_attempts: int, early_s: float = 1.0
) -> Batch | None:
    """The batch, when a try of its callback may start now: the try is counted at once
    (``callback_attempts`` + 1, before any byte is sent) and ``callback_next_at`` moves ``lease_s`` ahead so
    that no other copy starts meanwhile. ``None``: delivered, given up, or another try is under way or not
    due yet (a copy of the message that came early).

    A batch whose last try was claimed but never recorded (its worker was lost mid-try) and whose lease
    has run out is given up here (``failed``) rather than tried once more than ``max_attempts``.
    """
    now = utcnow()
    due = [
        Batch.id == batch_id,
        Batch.callback_status == CallbackStatus.due.value,
        Batch.callback_next_at <= now + timedelta(seconds=early_s),
    ]
    claimed = session.execute(
        update(Batch)
        .where(*due, Batch.callback_attempts < max_attempts)
        .values(
            callback_next_at=now + timedelta(seconds=lease_s),
            callback_attempts=Batch.callback_attempts + 1,
        )
        .returning(Batch.id)
        .execution_options(synchronize_session=False)
    ).first()
    if claimed is None:
        session.execute(
            update(Batch)
            .where(*due, Batch.callback_attempts >= max_attempts)
            .values(
                callback_status=CallbackStatus.failed.value,
                callback_next_at=None,
                callback_error=LOST_TRY,
            )
            .execution_options(synchronize_session=False)
        )
        return None
    return session.scalars(
        select(Batch).where(Batch.id == batch_id).execution_options(populate_existing=True)
    ).one()


def record_try(
    session: Session, *, batch_id: str, error: str | None, retry_at: datetime | None, max_attempts: int
) -> CallbackStatus:
    """End a claimed try (already counted by :func:`claim`): ``error`` None → ``delivered``; else a try
    more, at ``retry_at``, or ``failed`` once ``max_attempts`` tries were made. Returns the new status."""
    batch = session.get(Batch, batch_id, populate_existing=True, with_for_update=True)
    if batch is None:
        return CallbackStatus.failed
    if error is None:
        batch.callback_status = CallbackStatus.delivered.value
        batch.callback_delivered_at = utcnow()
        batch.callback_next_at = None
        batch.callback_error = None
    else:
        batch.callback_error = error[:CALLBACK_ERROR_MAX]
        if (batch.callback_attempts or 0) >= max_attempts or retry_at is None:
            batch.callback_status = CallbackStatus.failed.value
            batch.callback_next_at = None
        else:
            batch.callback_next_at = retry_at
    session.flush()
    return CallbackStatus(batch.callback_status or CallbackStatus.failed.value)


def _chunks(items: list[str]) -> list[list[str]]:
    return [items[start : start + _CHUNK] for start in range(0, len(items), _CHUNK)]
