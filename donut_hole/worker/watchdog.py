"""The watchdog of a worker: sends again the documents that a vanished worker left ``processing``.

A worker killed without a shutdown (``kill -9``, the out-of-memory killer, a lost machine) leaves the
documents of the group it was reading ``processing``. Redis and RabbitMQ give its unacknowledged message to
another worker after the visibility timeout; the embedded SQLite transport never does, and those documents
would wait for good. So the main process of every worker runs one daemon thread that calls
:func:`~donut_hole.worker.recovery.recover_stalled` when the worker is ready and then every
:func:`interval_s` seconds: documents ``processing`` for longer than ``DONUT_HOLE_STALLED_AFTER_S`` (default:
the hard time limit + 60 s, when no live worker can still be reading them), those ``queued`` whose last
message is older than the retry budget (a retry whose message went with such a worker, or a task that gave
up while the database was down), and those never sent (the broker was down when their batch was stored,
``DONUT_HOLE_UNSENT_AFTER_S``) go back to ``queued`` and are sent again. With Redis this only
comes first when the visibility timeout is longer; the copy that arrives later finds the documents done
and skips them (the tasks' writes are idempotent). The thread owns its
:class:`~donut_hole.services.Services` (with the worker's Celery app) and closes them when it stops.

Each round also looks after completion webhooks (:func:`~donut_hole.worker.webhook.recover`): batches
finished without a group noticing (every file refused at enqueue, an empty prefix) and deliveries whose
message was lost are sent (again).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import signals

from donut_hole.logs import log_event
from donut_hole.queue import settings_of, stalled_after_s
from donut_hole.services import Services
from donut_hole.settings import Settings
from donut_hole.worker import webhook
from donut_hole.worker.recovery import recover_stalled

log = logging.getLogger("donut_hole.worker")

MAX_INTERVAL_S = 60.0


def interval_s(settings: Settings) -> float:
    """Seconds between two looks: a quarter of the shorter of the stall age and the unsent age, between
    1 s and a minute."""
    shortest = min(stalled_after_s(settings), settings.unsent_after_s)
    return min(MAX_INTERVAL_S, max(1.0, shortest / 4))


class Watchdog(threading.Thread):
    """Calls ``recover_stalled`` now and every :func:`interval_s` seconds until :meth:`stop`."""

    def __init__(self, services: Services) -> None:
        super().__init__(name="donut-hole-watchdog", daemon=True)
        self.services = services
        self._stopped = threading.Event()

    def run(self) -> None:
        interval = interval_s(self.services.settings)
        try:
            while True:
                for look in (recover_stalled, webhook.recover):
                    try:
                        look(self.services)
                    except Exception as exc:  # a database or broker outage: look again at the next round
                        error = f"{type(exc).__name__}: {exc}"
                        log_event(log, "watchdog.error", level=logging.WARNING, error=error)
                if self._stopped.wait(interval):
                    return
        finally:
            self.services.close()

    def stop(self) -> None:
        self._stopped.set()


_running: Watchdog | None = None


@signals.worker_ready.connect
def _start(sender: Any = None, **_: Any) -> None:
    global _running
    app = getattr(sender, "app", None)  # the consumer of the worker that is ready
    if app is None or _running is not None:
        return
    _running = Watchdog(Services(settings_of(app), celery=app))
    _running.start()


@signals.worker_shutdown.connect
def _stop(**_: Any) -> None:
    global _running
    if _running is not None:
        _running.stop()
        _running = None
