"""Sending documents to the workers: groups of ids on the settings' queue, and a record that they went.

Messages go out after their rows are committed (a worker that takes one is sure to find its rows), and
``sent_at`` records each message on its way, so a watchdog can send what never left (:mod:`.recovery`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from donut_hole.db import repository, session_scope
from donut_hole.logs import log_event
from donut_hole.queue import TASK_PROCESS
from donut_hole.services import Services
from donut_hole.worker.batching import chunked

log = logging.getLogger("donut_hole.enqueue")

SEND_PAGE = 256  # documents sent between two records of sent_at
PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2.0}


class BrokerUnavailable(RuntimeError):
    """The batch is stored but its messages could not be sent; ``batch_id`` can be re-sent later."""

    def __init__(self, batch_id: str, error: BaseException) -> None:
        super().__init__(
            f"batch {batch_id} is stored but the broker is unreachable ({error}); its documents stay "
            "queued and a worker's watchdog sends them once the broker is back (or run "
            f"`donut-hole enqueue --resend {batch_id}`)"
        )
        self.batch_id = batch_id


def send_group(services: Services, document_ids: list[str]) -> None:
    """One message: a group of document ids for one forward pass, on the settings' queue; then the
    documents' ``sent_at`` (see :func:`mark_sent`)."""
    services.celery.send_task(
        TASK_PROCESS,
        args=[document_ids],
        queue=services.settings.queue,
        retry=True,
        retry_policy=PUBLISH_RETRY,
    )
    mark_sent(services, document_ids)


def mark_sent(services: Services, document_ids: Sequence[str]) -> None:
    """Record that the documents' message is on its way (``sent_at``). Best effort: when the database
    fails right now the documents look unsent, and a watchdog sends them once more, which is harmless (a
    second message finds them done and skips them)."""
    if not document_ids:
        return
    try:
        with session_scope(services.sessions) as session:
            repository.mark_sent(session, document_ids=document_ids)
    except Exception as exc:  # the database is down: see above
        log_event(log, "documents.sent_unrecorded", level=logging.WARNING, documents=len(document_ids),
                  error=f"{type(exc).__name__}: {exc}")  # fmt: skip


def send_groups(services: Services, document_ids: list[str], *, batch_id: str) -> None:
    """Send ``document_ids`` in groups of ``batch_size`` over one broker connection."""
    app, settings = services.celery, services.settings
    try:
        with app.producer_or_acquire() as producer:
            for group in chunked(document_ids, settings.batch_size):
                app.send_task(
                    TASK_PROCESS,
                    args=[group],
                    queue=settings.queue,
                    producer=producer,
                    retry=True,
                    retry_policy=PUBLISH_RETRY,
                )
    except Exception as exc:  # kombu raises several connection error types
        raise BrokerUnavailable(batch_id, exc) from exc


def send_stored(services: Services, document_ids: list[str], *, batch_id: str) -> None:
    """:func:`send_groups` for committed rows, then :func:`mark_sent`, a page at a time (a long batch
    is not left looking unsent while it goes out)."""
    size = services.settings.batch_size
    for page in chunked(document_ids, size * max(1, SEND_PAGE // size)):  # whole groups per page
        send_groups(services, page, batch_id=batch_id)
        mark_sent(services, page)
