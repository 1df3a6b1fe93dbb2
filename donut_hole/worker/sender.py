"""The callback sender: webhook deliveries on their own queue, in a small thread pool of the worker's main
process, never in the pool processes that read documents.

Every worker (``donut-hole worker`` or ``celery -A donut_hole.worker.app:celery_app worker``) consumes the
callbacks queue (``cpu.callbacks``, :func:`~.app.callback_queue`) with a message consumer of its own
(:class:`CallbackSender`, a Celery consumer bootstep) and makes each try (:func:`.webhook.deliver`) in one
of ``callback_threads`` threads. So a receiver that answers slowly, or not at all, holds one of those
threads for at most ``callback_timeout_s`` (the deadline of the whole POST) and never a document: reading
goes on at its own pace whatever the receivers do.

A message is acknowledged when it arrives and its try is scheduled here (at its ``eta``, and again after
the backoff of a failed try). What a worker had scheduled when it stopped is still ``due`` in the
database, and every worker's watchdog sends it again once it is overdue (:func:`.webhook.recover`): the
database, not the message, holds each callback's state, so nothing is lost and a try under way (claimed,
with a lease longer than its deadline) is never made twice at once.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from celery import bootsteps
from kombu import Consumer, Message

from donut_hole.logs import log_event
from donut_hole.services import Services
from donut_hole.settings import Settings

log = logging.getLogger("donut_hole.webhook")


class Scheduler:
    """Runs ``deliver(batch_id)`` in a pool of ``threads`` threads at the time each try is due; a try that
    returns seconds (a failed try with tries left) is run again that much later."""

    def __init__(self, deliver: Any, *, threads: int) -> None:
        self._deliver = deliver
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="donut-hole-callback")
        self._heap: list[tuple[float, int, str]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._stopped = False
        self._timer = threading.Thread(target=self._run, name="donut-hole-callback-timer", daemon=True)
        self._timer.start()

    def at(self, batch_id: str, when: float) -> None:
        """Try ``batch_id``'s callback at ``when`` (``time.time()`` seconds; now if past)."""
        with self._wake:
            if self._stopped:
                return
            heapq.heappush(self._heap, (when, next(self._order), batch_id))
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.time()):
                    self._wake.wait(None if not self._heap else max(0.0, self._heap[0][0] - time.time()))
                if self._stopped:
                    return
                _, _, batch_id = heapq.heappop(self._heap)
            self._pool.submit(self._try, batch_id)

    def _try(self, batch_id: str) -> None:
        try:
            retry_in = self._deliver(batch_id)
        except Exception as exc:  # the database is down: the batch stays due, the watchdog sends it again
            error = f"{type(exc).__name__}: {exc}"
            log_event(log, "callback.try_error", level=logging.WARNING, batch_id=batch_id, error=error)
            return
        if retry_in is not None:
            self.at(batch_id, time.time() + retry_in)

    def stop(self) -> None:
        """Start nothing more; wait for the tries under way (each ends by its deadline)."""
        with self._wake:
            self._stopped = True
            self._heap.clear()
            self._wake.notify_all()
        self._timer.join(5)
        self._pool.shutdown(wait=True, cancel_futures=True)


def eta_of(message: Message) -> float:
    """When a delivery message's try is due (``time.time()`` seconds): its Celery ``eta``, else now."""
    eta = (message.headers or {}).get("eta")
    if isinstance(eta, str):
        try:
            return datetime.fromisoformat(eta).timestamp()
        except ValueError:
            pass
    return time.time()


def batch_of(body: Any) -> str | None:
    """The batch id of a delivery message's body (Celery's ``[args, kwargs, embed]``), or None."""
    if isinstance(body, list | tuple) and body and isinstance(body[0], list | tuple) and body[0]:
        batch_id = body[0][0]
        return batch_id if isinstance(batch_id, str) else None
    return None


class CallbackSender(bootsteps.ConsumerStep):
    """The worker's consumer of the callbacks queue (added to every app by :func:`~.app.make_celery`)."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.app = parent.app
        self.services: Services | None = None
        self.scheduler: Scheduler | None = None

    def _settings(self) -> Settings:
        from donut_hole.queue import settings_of

        return settings_of(self.app)

    def get_consumers(self, channel: Any) -> list[Consumer]:
        from donut_hole.queue import callback_queue

        settings = self._settings()
        if self.scheduler is None:  # made once: the consumer is made again after a broker reconnect
            self.services = Services(settings, celery=self.app)
            self.scheduler = Scheduler(self._deliver, threads=settings.callback_threads)
        queue = self.app.amqp.queues[callback_queue(settings)]
        return [Consumer(channel, queues=[queue], callbacks=[self._on_message], accept=["json"])]

    def _deliver(self, batch_id: str) -> float | None:
        from donut_hole.worker.webhook import deliver

        assert self.services is not None
        return deliver(self.services, batch_id=batch_id)

    def _on_message(self, body: Any, message: Message) -> None:
        batch_id = batch_of(body)
        if batch_id is not None and self.scheduler is not None:
            self.scheduler.at(batch_id, eta_of(message))
        else:
            log_event(log, "callback.bad_message", level=logging.WARNING)
        message.ack()

    def shutdown(self, c: Any) -> None:
        super().shutdown(c)
        if self.scheduler is not None:
            self.scheduler.stop()
            self.scheduler = None
        if self.services is not None:
            self.services.close()
            self.services = None
