"""Sending again what did not arrive: a batch's queued documents, its transient failures, and what a
vanished worker, a given-up sender or a broker outage left behind (the watchdog's look, once a minute).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from donut_hole.db import DocumentStatus, repository, session_scope
from donut_hole.db.models import Document, utcnow
from donut_hole.logs import log_event
from donut_hole.queue import resend_after_s, stalled_after_s
from donut_hole.services import Services
from donut_hole.worker.enqueue import EnqueueError
from donut_hole.worker.sending import send_groups, send_stored

log = logging.getLogger("donut_hole.enqueue")


def never_uploaded(services: Services, *, batch_id: str) -> list[str]:
    """File names of the batch's documents whose upload the store refused (``not uploaded: ...``)."""
    return [
        document.uri.rsplit("/", 1)[-1]
        for document in _documents(services, batch_id=batch_id)
        if document.status == DocumentStatus.failed
        and (document.error or "").startswith(repository.NOT_UPLOADED)
    ]


def resend_queued(services: Services, *, batch_id: str) -> int:
    """Send messages again for the batch's documents that are still ``queued``; returns how many."""
    queued = [
        document.id
        for document in _documents(services, batch_id=batch_id)
        if document.status == DocumentStatus.queued
    ]
    send_stored(services, queued, batch_id=batch_id)
    return len(queued)


def _documents(services: Services, *, batch_id: str) -> list[Document]:
    """The batch's documents (their rows alone), or :class:`EnqueueError` for a batch that does not exist."""
    with session_scope(services.sessions) as session:
        try:
            documents = repository.batch_documents(session, batch_id=batch_id)
        except repository.BatchNotFound as exc:
            raise EnqueueError(str(exc)) from exc
    return documents


def retry_failed(services: Services, *, batch_id: str) -> int:
    """Queue again the batch's documents that failed for a transient reason (``transient: ...`` in
    ``error``: an outage longer than the retry budget); returns how many. Other failures (a corrupt image,
    a missing object) would fail again and are left as they are. ``donut-hole enqueue --retry-failed``."""
    # Sent before the commit: with the broker down nothing changes and the call can be made again.
    with session_scope(services.sessions) as session:
        try:
            document_ids = repository.requeue_transient_failures(session, batch_id=batch_id)
        except repository.BatchNotFound as exc:
            raise EnqueueError(str(exc)) from exc
        send_groups(services, document_ids, batch_id=batch_id)
    log_event(log, "documents.retried", batch_id=batch_id, documents=len(document_ids))
    return len(document_ids)


def recover_stalled(services: Services, *, older_than_s: float | None = None) -> int:
    """Send again the documents a vanished worker, a given-up sender or a broker outage left behind;
    returns how many.

    They are ``processing`` for longer than ``older_than_s`` (their worker stopped without finishing
    them: killed, out of memory, a lost machine), ``queued`` with a last message older than
    :func:`~donut_hole.queue.resend_after_s` (a retry whose worker vanished, or a task that gave up
    while the database was down), or ``queued`` and never sent for ``unsent_after_s`` (the broker was
    down when their batch was stored). The default age is
    :func:`~donut_hole.queue.stalled_after_s`, past the hard time limit, so no live worker is still
    reading them; a copy that still arrives later finds them done and skips them. Each worker runs this
    once a minute (:mod:`.watchdog`); ``donut-hole enqueue --recover`` runs it by hand.
    """
    settings = services.settings
    age_s = older_than_s if older_than_s is not None else stalled_after_s(settings)
    waiting_s = resend_after_s(settings, older_than_s=older_than_s)
    now = utcnow()
    reason = (
        f"sent again: no worker finished it (processing for more than {age_s:g} s, its message on its way "
        f"for more than {waiting_s:g} s, or never sent: its worker was lost or the broker or database "
        "was down)"
    )
    # The messages go out before the commit: if the broker is down the update is rolled back and the
    # documents stay as they were for the next look, never 'queued' with no message on its way.
    with session_scope(services.sessions) as session:
        rows = repository.requeue_stalled(
            session,
            started_before=now - timedelta(seconds=age_s),
            waiting_before=now - timedelta(seconds=waiting_s),
            unsent_before=now - timedelta(seconds=settings.unsent_after_s),
            reason=reason,
        )
        by_batch: dict[str, list[str]] = {}
        for document_id, batch_id in rows:
            by_batch.setdefault(batch_id, []).append(document_id)
        for batch_id, document_ids in by_batch.items():
            send_groups(services, sorted(document_ids), batch_id=batch_id)
    for batch_id, document_ids in by_batch.items():
        log_event(log, "documents.recovered", batch_id=batch_id, documents=len(document_ids))
    return len(rows)
