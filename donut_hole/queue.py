"""What every process shares about the queue: task names, time policy, the Celery app and the broker.

The API, the CLI and the workers all send through a Celery app made here (:func:`make_celery`); only a
worker adds its lifecycle hooks (:mod:`donut_hole.worker.app`: cores per pool process, the model loaded at
start, JSON logs). This module imports nothing of the worker, so the API and the CLI load no worker code.

A worker also consumes ``cpu.callbacks``, the queue of webhook deliveries (:func:`callback_queue`), with a
consumer and a small thread pool of its own in the main process (:mod:`donut_hole.worker.sender`), never
in the pool processes that read documents.

Delivery guarantees come from the configuration, not from the tasks:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged after its documents are
  stored; a pool process that dies hands its message back to the broker.
* ``worker_prefetch_multiplier = 1``: one group per pool process in flight (see
  :mod:`donut_hole.worker.batching`).
* Redis: ``visibility_timeout`` longer than the hard time limit plus the longest retry delay, so a message is
  redelivered only when its worker is really gone (then the tasks' idempotent writes make redelivery safe).
* The embedded broker (``sqla+sqlite:///var/broker.sqlite3``: kombu's SQLAlchemy transport, polled every
  0.1 s, :class:`Transport`) needs no server. It redelivers what a worker had not finished when the worker
  shuts down, but not after the worker is killed (``kill -9``): that needs Redis or RabbitMQ, as in
  production, or the watchdog (:mod:`donut_hole.worker.watchdog`), which every worker runs: it sends again
  the documents left ``processing`` for longer than the hard time limit + 60 s. Delivered messages stay in
  its table (``visible = 0``); delete the file to start afresh.

kombu's virtual transports look for new messages once per ``polling_interval`` (1 s by default) when a queue
was empty, and its SQLAlchemy transport passes every transport option on to ``create_engine``, so the
interval cannot be set as an option: :class:`Transport` only changes it, and :func:`broker_url_for_celery`
rewrites ``sqla+sqlite:///...`` URLs to it (other URLs, ``redis://``, ``amqp://``, are kept).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Transport as SQLAlchemyTransport

from donut_hole.settings import Settings, get_settings

TASK_PROCESS = "donut_hole.process_documents"
TASK_EXPAND = "donut_hole.expand_prefix"
TASK_CALLBACK = "donut_hole.deliver_callback"
HARD_LIMIT_GRACE_S = 30  # the hard time limit kills the pool process this long after the soft one
STALL_GRACE_S = 60  # a document still processing this long after the hard time limit has lost its worker


def callback_queue(settings: Settings) -> str:
    """The queue of webhook deliveries, beside the documents' queue (``cpu`` → ``cpu.callbacks``).

    Every worker consumes it beside its own queues, in threads of its main process
    (:class:`~.sender.CallbackSender`): a finished batch's callback goes out at once, neither after the
    backlog of other batches' groups nor in the time of a pool process that reads documents.
    """
    return f"{settings.queue}.callbacks"


def time_limits(settings: Settings) -> tuple[int, int]:
    """``(soft, hard)`` seconds for one task: ``task_time_limit_s`` and a grace period after it."""
    soft = settings.task_time_limit_s
    return soft, soft + max(HARD_LIMIT_GRACE_S, soft // 10)


def stalled_after_s(settings: Settings) -> int:
    """How long a document may stay ``processing`` before it counts as lost (see :mod:`.watchdog`).

    Past the hard time limit no live worker can still be reading it: the limit kills the pool process.
    """
    return settings.stalled_after_s or time_limits(settings)[1] + STALL_GRACE_S


def resend_after_s(settings: Settings, *, older_than_s: float | None = None) -> float:
    """How long a ``queued`` document's last message may be on its way before it counts as lost.

    A worker holds a retry's message until its countdown ends (at most ``retry_backoff_max_s``), and a
    task retries transient errors for ``retry_budget_s`` before it gives up (during a database outage it
    cannot even record that): past both, and past the stall age, no live worker still holds a message
    for it, and the watchdog sends it again (see :mod:`.watchdog`).
    """
    age = stalled_after_s(settings) if older_than_s is None else older_than_s
    budget = settings.retry_budget_s if older_than_s is None else 0.0
    return max(age, budget) + settings.retry_backoff_max_s


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings of the pipeline, as a plain dict (also what the tests inspect)."""
    soft, hard = time_limits(settings)
    config: dict[str, Any] = {
        "broker_url": broker_url_for_celery(settings.broker_url),
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # a broker outage of any length: reconnect, never exit
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_acks_on_failure_or_timeout": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_default_queue": settings.queue,
        "task_routes": {
            TASK_CALLBACK: {"queue": callback_queue(settings)},
            "donut_hole.*": {"queue": settings.queue},
        },
        "task_soft_time_limit": soft,
        "task_time_limit": hard,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "broker_transport_options": _transport_options(
            settings.broker_url, hard_limit_s=hard, max_delay_s=settings.retry_backoff_max_s
        ),
    }
    return config


def _transport_options(broker_url: str, *, hard_limit_s: int, max_delay_s: float) -> dict[str, Any]:
    if broker_url.startswith(("redis://", "rediss://", "sentinel://")):
        # A message unacknowledged this long is given to another consumer: keep it well above the longest
        # task, and above the longest countdown of a retry (the broker holds those messages too).
        return {"visibility_timeout": max(3600, int(2 * hard_limit_s + max_delay_s))}
    if broker_url.startswith(("sqla+sqlite", "sqlalchemy+sqlite")):
        # These options go to sqlalchemy.create_engine: wait for the file lock instead of failing at once.
        return {"connect_args": {"timeout": 30}}
    return {}


def make_celery(settings: Settings | None = None, *, overrides: Mapping[str, Any] | None = None) -> Celery:
    """A Celery app for ``settings`` (the process settings by default); ``overrides`` win over the defaults.

    >>> app = make_celery(Settings(broker_url="redis://127.0.0.1:6379/0"))  # doctest: +SKIP
    """
    settings = settings or get_settings()
    # Imported by workers at start: the tasks, and the watchdog that sends lost documents again.
    app = Celery("donut_hole", include=["donut_hole.worker.tasks", "donut_hole.worker.watchdog"])
    config = celery_config(settings)
    config.update(overrides or {})
    app.conf.update(config)
    # by name: a worker's consumer loads it; the API and the CLI, which consume nothing, never import it
    app.steps["consumer"].add("donut_hole.worker.sender:CallbackSender")
    app.donut_hole_settings = settings  # type: ignore[attr-defined]  # read by settings_of
    return app


def settings_of(app: Celery) -> Settings:
    """The settings an app runs with: those :func:`make_celery` attached, else the process settings."""
    settings = getattr(app, "donut_hole_settings", None)
    return settings if isinstance(settings, Settings) else get_settings()


ALIAS = "donut-hole-sqlite"
POLLING_INTERVAL_S = 0.1


class Transport(SQLAlchemyTransport):
    """kombu's SQLAlchemy transport, polled every :data:`POLLING_INTERVAL_S` (see the module docstring)."""

    polling_interval = POLLING_INTERVAL_S


def register() -> None:
    """Make ``donut-hole-sqlite+sqlite:///...`` URLs resolve to :class:`Transport` in this process."""
    TRANSPORT_ALIASES.setdefault(ALIAS, f"{__name__}:Transport")


def broker_url_for_celery(url: str) -> str:
    """``sqla+sqlite:///x`` → ``donut-hole-sqlite+sqlite:///x``; any other URL unchanged."""
    for prefix in ("sqla+sqlite:", "sqlalchemy+sqlite:"):
        if url.startswith(prefix):
            register()
            return f"{ALIAS}+{url.split('+', 1)[1]}"
    return url
