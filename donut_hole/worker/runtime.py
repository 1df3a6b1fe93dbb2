"""What one worker process holds: its :class:`~donut_hole.services.Services` and the model, each made once.

A :class:`Runtime` is created lazily in the process that runs tasks (a Celery pool process), never in the
parent before ``fork``: engines and torch thread pools do not survive a fork. :func:`get_runtime` returns
the process's runtime and makes a new one when the process id or the worker's Celery app changed.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from celery import Celery

from donut_hole.db import repository, session_scope
from donut_hole.logs import log_event
from donut_hole.queue import settings_of
from donut_hole.services import Services
from donut_hole.settings import Settings

if TYPE_CHECKING:
    from donut_hole.model.predict import DonutReader

log = logging.getLogger("donut_hole.worker")

_HASHED_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt")

default_threads = 0
"""torch threads when ``settings.torch_threads`` is 0; a worker sets it to cores / pool processes."""


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Runtime(Services):
    """The services of one worker process (engine, sessions, store, the worker's Celery app) and its model.

    Each part is made on first use; ``celery`` is the app of the worker that runs the tasks, so what a
    task sends goes out through the worker's own connection.
    """

    def __init__(self, settings: Settings, *, celery: Celery | None = None) -> None:
        super().__init__(settings, celery=celery)
        self.pid = os.getpid()
        self._reader: DonutReader | None = None
        self._reader_lock = threading.Lock()  # one load, whether a task or :meth:`preload` asks first

    @property
    def reader(self) -> DonutReader:
        """The model, loaded once per process, on the configured device and thread count.

        A task that asks while :meth:`preload` is loading waits for that load (its time limit still
        applies: the wait ends with the soft limit's exception); a load that failed is tried again. A time
        limit that comes during the task's own load is raised once the model is loaded and kept
        (:func:`signals_held`): that group times out, the next one reads with the model."""
        if self._reader is None:
            with self._reader_lock:
                if self._reader is None:
                    with signals_held():
                        self._reader = self._load_reader()
        return self._reader

    def preload(self) -> threading.Thread:
        """Load the model in a background thread, so that the first group does not wait for it; a failure
        is logged and left to that group, which loads again and fails with the reason."""

        def load() -> None:
            try:
                self.reader  # noqa: B018  # the load is the property's first use
            except Exception as exc:  # the first task loads again and fails its group with the reason
                log_event(log, "model.preload_failed", level=logging.WARNING, error=type(exc).__name__)

        thread = threading.Thread(target=load, name="donut-hole-preload", daemon=True)
        thread.start()
        return thread

    def _load_reader(self) -> DonutReader:
        import torch

        s = self.settings
        threads = s.torch_threads or default_threads
        if threads > 0:
            torch.set_num_threads(threads)
        start = time.perf_counter()
        reader = load_reader(s)
        device = str(reader.device)
        log_event(
            log,
            "model.loaded",
            path=str(s.model_path),
            device=device,
            precision=reader.precision,
            task_prompt=reader.task_token,
            threads=torch.get_num_threads(),
            seconds=round(time.perf_counter() - start, 3),
        )
        return reader

    @cached_property
    def model_id(self) -> int:
        """The ``models`` row of the loaded checkpoint (name = folder name, sha256 of its files, density)."""
        from donut_hole.model.build import density_of

        path = Path(self.settings.model_path)
        with session_scope(self.sessions) as session:
            model = repository.get_or_create_model(
                session,
                name=path.resolve().name,
                path=str(path.resolve()),
                sha256=model_digest(path),
                density=density_of(path),
            )
            return model.id


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold back this process's Python signal handlers for the block, then run each whose signal came.

    Celery's soft time limit (like Ctrl-C) is an exception raised by a signal handler wherever the main
    thread is. Inside a model's load it tears library code halfway: torch's device context left on
    ``meta`` (every later load in the process then builds empty tensors), a lock released twice, the
    exception turned into another one. Held back, it is raised at the end of the block instead, once
    the load is whole. Handlers run only in the main thread: elsewhere this holds nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved: dict[int, Callable[[int, FrameType | None], object]] = {}
    came: list[int] = []
    released = False

    def hold(signum: int, frame: FrameType | None) -> None:
        if released:  # left in place by an exception while the handlers were put back: pass it on
            saved[signum](signum, frame)
        else:
            came.append(signum)

    try:
        for sig in signal.valid_signals():
            try:
                handler = signal.getsignal(sig)
            except (OSError, ValueError):
                continue
            if callable(handler):
                saved[sig] = handler  # before it is replaced, so that it is always put back
                signal.signal(sig, hold)
        yield
    finally:
        released = True
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(came):  # in the order they came, each once
            saved[signum](signum, inspect.currentframe())


def load_reader(settings: Settings) -> DonutReader:
    """The configured model as a reader (path, device, precision, task prompt); ModelLoadError otherwise."""
    from donut_hole.model.predict import DonutReader

    reader = DonutReader.from_path(
        settings.model_path,
        device=settings.device,
        precision=settings.precision,
        task_prompt=settings.task_prompt,
        max_new_tokens=settings.max_new_tokens,
        max_pixels=settings.max_image_pixels,
    )
    reader.locate = settings.locate_fields
    return reader


def model_digest(folder: Path) -> str:
    """sha256 over the names and bytes of a checkpoint folder's weight, config and tokenizer files."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix in _HASHED_SUFFIXES):
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as data:
            for block in iter(lambda: data.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


_lock = threading.Lock()
_runtime: Runtime | None = None


def get_runtime(app: Celery) -> Runtime:
    """This process's runtime for the worker app ``app`` (a new one after a fork or for another app)."""
    global _runtime
    with _lock:
        current = _runtime
        if current is None or current.pid != os.getpid() or current.celery is not app:
            if current is not None and current.pid == os.getpid():
                current.close()
            _runtime = current = Runtime(settings_of(app), celery=app)
        return current
