"""Celery tasks: thin shells that take ids, call :mod:`.process` and decide about retries.

The tasks are bound to whichever app runs them (``shared_task``); the settings are the app's
(:func:`~donut_hole.queue.make_celery` attaches them), so tests can run workers with their own settings,
and the process's :class:`~donut_hole.worker.runtime.Runtime` sends with that same app.

Retries run on a time budget, not a count: a transient error (object store or database unreachable) sends
the affected documents back with a delay of :func:`backoff_s` (exponential, capped at
``retry_backoff_max_s``, half of it random) for as long as ``retry_budget_s`` since the group's first
transient error (``failing_since``, carried by the retries). Past it, documents the object store did not
give are ``failed`` with ``transient: ...`` (``donut-hole enqueue --retry-failed`` queues them again); a
group that still cannot reach the database gives up without a word to it, and the watchdog sends its
documents again (their ``sent_at`` is old). Documents finished before the error are skipped when the group
comes back.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import InterfaceError, OperationalError

from donut_hole.logs import log_event
from donut_hole.queue import TASK_EXPAND, TASK_PROCESS, time_limits
from donut_hole.settings import Settings
from donut_hole.storage import TransientStorageError
from donut_hole.worker import metrics, process, webhook
from donut_hole.worker.runtime import get_runtime
from donut_hole.worker.sending import send_group

log = logging.getLogger("donut_hole.worker")

DATABASE_ERRORS = (OperationalError, InterfaceError)
# The group's own deadline comes this long after the pool's soft-limit signal is due, so that signal stops
# the group first and the deadline only where a library swallowed it: never both in one group (a second
# SoftTimeLimitExceeded would interrupt the failing of its documents).
DEADLINE_GRACE_S = 1.0


def backoff_s(retries: int, *, base_s: float = 2.0, cap_s: float = 60.0, rng: Any = random) -> float:
    """Delay before retry number ``retries + 1``: exponential, capped, half of it random ("equal jitter").

    ``retries=0`` → 1-2 s, ``1`` → 2-4 s, ``2`` → 4-8 s, ... never more than ``cap_s``.
    """
    delay = min(cap_s, base_s * 2.0**retries)
    return delay / 2 + rng.uniform(0.0, delay / 2)


def out_of_budget(settings: Settings, failing_since: float | None, *, now: float) -> bool:
    """Whether transient errors have been retried for ``retry_budget_s`` already (this is the last try)."""
    return failing_since is not None and now - failing_since >= settings.retry_budget_s


def _retry(
    task: Task, settings: Settings, failing_since: float, *, resumed: list[str] | None = None, **options: Any
) -> Exception:
    countdown = backoff_s(task.request.retries, cap_s=settings.retry_backoff_max_s)
    kwargs: dict[str, Any] = {"failing_since": failing_since}
    if resumed:
        kwargs["resumed"] = resumed
    return task.retry(countdown=countdown, max_retries=None, kwargs=kwargs, **options)


@shared_task(bind=True, name=TASK_PROCESS, max_retries=None)  # bounded by retry_budget_s instead
def process_documents(
    self: Task,
    document_ids: list[str],
    failing_since: float | None = None,
    resumed: list[str] | None = None,
) -> dict[str, int]:
    """Read one group of documents in one forward pass and store the results.

    ``failing_since``: when this group's first transient error happened (carried by its retries);
    ``resumed``: documents an earlier try claimed before a database error (their attempt goes on).
    """
    started = time.monotonic()  # the pool's soft time limit counts from (just before) here
    rt = get_runtime(self.app)
    settings = rt.settings
    now = time.time()
    last_try = out_of_budget(settings, failing_since, now=now)
    outcome = process.GroupOutcome()
    try:
        process.process_group(
            rt,
            document_ids,
            last_try=last_try,
            resumed=set(resumed or ()),
            outcome=outcome,
            send=lambda ids: send_group(rt, ids),
            deadline=started + time_limits(settings)[0] + DEADLINE_GRACE_S,
        )
    except DATABASE_ERRORS as exc:
        if last_try:  # nothing can be written: the documents' old sent_at brings the watchdog to them
            log_event(
                log, "group.database_gave_up", level=logging.ERROR, documents=document_ids, error=str(exc)
            )
            return {"given_up": len(document_ids)}
        log_event(log, "group.retry", level=logging.WARNING, documents=len(document_ids), error=str(exc))
        # a claim that did not come back may have committed: its documents' attempt goes on too (one
        # that was not claimed is still queued and is claimed as usual)
        claimed = outcome.claimed if outcome.claim_ended else document_ids
        going_on = sorted((set(resumed or ()) | set(claimed)) - set(outcome.done))
        raise _retry(self, settings, failing_since or now, resumed=going_on, exc=exc) from exc
    except SoftTimeLimitExceeded:
        soft, _ = time_limits(settings)
        reason = (
            f"timed out: reading a group of {len(document_ids)} documents took longer than {soft} s "
            "(DONUT_HOLE_TASK_TIME_LIMIT_S)"
        )
        process.fail_unfinished(rt, document_ids, reason=reason, kind="timeout")
        webhook.notify_finished(rt, document_ids=document_ids)
        return {"failed": len(document_ids)}
    except Exception as exc:  # a bug or a broken model: fail these documents loudly, keep the worker going
        log.exception("group.internal_error", extra={"fields": {"documents": document_ids}})
        reason = f"internal error while reading: {type(exc).__name__}"
        process.fail_unfinished(rt, document_ids, reason=reason, kind="internal")
        webhook.notify_finished(rt, document_ids=document_ids)
        return {"failed": len(document_ids)}
    if outcome.retry:
        metrics.DOCUMENT_RETRIES.inc(len(outcome.retry))
        raise _retry(self, settings, failing_since or now, args=[sorted(outcome.retry)])
    webhook.notify_finished(rt, document_ids=document_ids)  # the batches this group finished, if any
    return {"done": len(outcome.done), "failed": len(outcome.failed), "skipped": len(outcome.skipped)}


@shared_task(bind=True, name=TASK_EXPAND, max_retries=None)
def expand_prefix(self: Task, batch_id: str, prefix_uri: str, failing_since: float | None = None) -> int:
    """List an S3 prefix into a batch and send its documents; retried on transient errors."""
    rt = get_runtime(self.app)
    settings = rt.settings
    now = time.time()
    try:
        found = process.expand_prefix(
            rt, batch_id=batch_id, prefix_uri=prefix_uri, send=lambda ids: send_group(rt, ids)
        )
        # groups that ended while the batch was still listing could not finish it
        webhook.notify_finished(rt, batch_ids=[batch_id])
        return found
    except (TransientStorageError, *DATABASE_ERRORS) as exc:
        if out_of_budget(settings, failing_since, now=now):
            process.mark_batch_failed(
                rt,
                batch_id,
                f"transient: gave up listing {prefix_uri} after {settings.retry_budget_s:g} s of retries: "
                f"{exc}",
            )
            webhook.notify_finished(rt, batch_ids=[batch_id])
            return 0
        log_event(log, "batch.retry", level=logging.WARNING, batch_id=batch_id, error=str(exc))
        raise _retry(self, settings, failing_since or now, exc=exc) from exc
