"""A worker's Celery app and its lifecycle hooks (what only a worker process needs).

Run a worker with ``donut-hole worker`` or ``celery -A donut_hole.worker.app:celery_app worker -Q cpu``.
The app itself, the task names and the time policy are :mod:`donut_hole.queue`'s, which the API and the
CLI use without loading any of this. Importing this module connects the hooks: each pool process gets an
equal share of the cores, loads its model at start, and every log line is JSON.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from donut_hole.queue import make_celery
from donut_hole.settings import get_settings


@signals.worker_init.connect
def _share_cores(sender: Any = None, **_: Any) -> None:
    """With ``torch_threads = 0``, give each pool process an equal share of the cores (at least one).

    Several processes that each start one torch thread per core oversubscribe the CPU badly (a measured
    30x slowdown with 2 processes on 2 cores), so the default divides the cores instead.
    """
    from donut_hole.worker import runtime

    concurrency = int(getattr(sender, "concurrency", 0) or 1)
    runtime.default_threads = max(1, runtime.cpu_count() // concurrency)


@signals.worker_process_init.connect
def _preload_model(**_: Any) -> None:
    """Each pool process starts loading its model at once, in the background: a worker that waited idle
    reads its first group without the load (seconds for a large model) in that group's time."""
    from celery import current_app

    from donut_hole.worker.runtime import get_runtime

    get_runtime(current_app._get_current_object()).preload()


@signals.setup_logging.connect
def _json_logging(loglevel: Any = None, **_: Any) -> None:
    """Replace Celery's log setup: every line of the worker is a JSON object (see :mod:`donut_hole.logs`)."""
    from donut_hole.logs import configure_json_logging

    configure_json_logging(loglevel or get_settings().log_level)


def __getattr__(name: str) -> Any:
    """``celery_app``: the app of the process settings, made on first use (importing this module is cheap)."""
    if name == "celery_app":
        global celery_app
        celery_app = make_celery()
        return celery_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


celery_app: Celery
