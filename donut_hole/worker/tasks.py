"""Celery tasks: thin shells that take ids, call :mod:`.process` and decide about retries.

The tasks are bound to whichever app runs them (``shared_task``); the settings are the app's
(:func:`~donut_hole.worker.app.make_celery` attaches them), so tests can run workers with their own settings,
and the process's :class:`~donut_hole.worker.runtime.Runtime` sends with that same app.

Retries: a transient error (object store or database unreachable) sends the affected documents back with
a delay of :func:`backoff_s`, at most ``max_retries`` times; on the last try they are marked ``failed`` with
the error. Documents finished before the error are skipped when the group comes back.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import InterfaceError, OperationalError

from donut_hole.logs import log_event
from donut_hole.storage import TransientStorageError
from donut_hole.worker import metrics, process
from donut_hole.worker.app import MAX_RETRY_DELAY_S, TASK_EXPAND, TASK_PROCESS, time_limits
from donut_hole.worker.enqueue import send_group
from donut_hole.worker.runtime import get_runtime

log = logging.getLogger("donut_hole.worker")

DATABASE_ERRORS = (OperationalError, InterfaceError)


def backoff_s(
    retries: int, *, base_s: float = 2.0, cap_s: float = MAX_RETRY_DELAY_S, rng: Any = random
) -> float:
    """Delay before retry number ``retries + 1``: exponential, capped, half of it random ("equal jitter").

    ``retries=0`` → 1-2 s, ``1`` → 2-4 s, ``2`` → 4-8 s, ... never more than ``cap_s``.
    """
    delay = min(cap_s, base_s * 2.0**retries)
    return delay / 2 + rng.uniform(0.0, delay / 2)


@shared_task(bind=True, name=TASK_PROCESS)
def process_documents(self: Task, document_ids: list[str]) -> dict[str, int]:
    """Read one group of documents in one forward pass and store the results."""
    rt = get_runtime(self.app)
    settings = rt.settings
    retries = self.request.retries
    last_try = retries >= settings.max_retries
    try:
        outcome = process.process_group(rt, document_ids, last_try=last_try)
    except DATABASE_ERRORS as exc:
        if last_try:
            log_event(
                log, "group.database_error", level=logging.ERROR, documents=document_ids, error=str(exc)
            )
            raise
        log_event(log, "group.retry", level=logging.WARNING, documents=len(document_ids), error=str(exc))
        raise self.retry(countdown=backoff_s(retries), max_retries=settings.max_retries, exc=exc) from exc
    except SoftTimeLimitExceeded:
        soft, _ = time_limits(settings)
        reason = (
            f"timed out: reading a group of {len(document_ids)} documents took longer than {soft} s "
            "(DONUT_HOLE_TASK_TIME_LIMIT_S)"
        )
        process.fail_unfinished(rt, document_ids, reason=reason, kind="timeout")
        return {"failed": len(document_ids)}
    except Exception as exc:  # a bug or a broken model: fail these documents loudly, keep the worker going
        log.exception("group.internal_error", extra={"fields": {"documents": document_ids}})
        reason = f"internal error while reading: {type(exc).__name__}: {exc}"
        process.fail_unfinished(rt, document_ids, reason=reason, kind="internal")
        return {"failed": len(document_ids)}
    if outcome.retry:
        metrics.DOCUMENT_RETRIES.inc(len(outcome.retry))
        raise self.retry(
            args=[sorted(outcome.retry)], countdown=backoff_s(retries), max_retries=settings.max_retries
        )
    return {"done": len(outcome.done), "failed": len(outcome.failed), "skipped": len(outcome.skipped)}


@shared_task(bind=True, name=TASK_EXPAND)
def expand_prefix(self: Task, batch_id: str, prefix_uri: str) -> int:
    """List an S3 prefix into a batch and send its documents; retried on transient errors."""
    rt = get_runtime(self.app)
    settings = rt.settings
    try:
        return process.expand_prefix(
            rt, batch_id=batch_id, prefix_uri=prefix_uri, send=lambda ids: send_group(rt, ids)
        )
    except (TransientStorageError, *DATABASE_ERRORS) as exc:
        retries = self.request.retries
        if retries >= settings.max_retries:
            process.mark_batch_failed(
                rt, batch_id, f"gave up listing {prefix_uri} after {retries + 1} attempts: {exc}"
            )
            return 0
        log_event(log, "batch.retry", level=logging.WARNING, batch_id=batch_id, error=str(exc))
        raise self.retry(countdown=backoff_s(retries), max_retries=settings.max_retries, exc=exc) from exc
