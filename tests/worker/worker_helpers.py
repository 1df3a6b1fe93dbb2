"""Helpers of the pipeline tests: subprocess environments, ``celery worker`` processes, waiting on a batch."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from donut_hole import demo
from donut_hole.db import make_engine, repository, session_factory, session_scope
from donut_hole.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """Sessions on the settings' database; the engine is disposed when the block ends."""
    engine = make_engine(settings.database_url)
    try:
        yield session_factory(engine)
    finally:
        engine.dispose()


def purge(settings: Settings) -> None:
    """Drop whatever is left in the settings' queue, and kombu's keys for it when the broker is Redis."""
    from donut_hole.queue import make_celery

    with make_celery(settings).connection_for_write() as connection:
        connection.default_channel.queue_purge(settings.queue)
    if settings.broker_url.startswith("redis://"):
        import redis

        client = redis.Redis.from_url(settings.broker_url)
        for key in client.scan_iter(f"*{settings.queue}*"):  # queue names are unique to the test session
            client.delete(key)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a subprocess that should see ``settings`` (plus ``extra`` variables)."""
    env = demo.settings_env(settings)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


class Worker:
    """A worker subprocess in its own process group, logging to a file.

    ``celery -A APP worker`` by default; with ``metrics_port`` the ``donut-hole worker`` command instead
    (the way production starts it), serving Prometheus metrics on that port.
    """

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        *,
        app: str = "donut_hole.worker.app:celery_app",
        concurrency: int = 1,
        metrics_port: int | None = None,
        **env: str,
    ) -> None:
        self.log_path = log_path
        self.metrics_port = metrics_port
        hostname = f"test-{uuid.uuid4().hex[:8]}@%h"
        if metrics_port is None:
            command = [
                sys.executable, "-m", "celery", "-A", app, "worker", "--queues", settings.queue,
                "--concurrency", str(concurrency), "--loglevel", "INFO", "--hostname", hostname,
                "--without-gossip", "--without-mingle",
            ]  # fmt: skip
        else:
            command = [
                sys.executable, "-m", "donut_hole", "worker",
                "--concurrency", str(concurrency), "--metrics-port", str(metrics_port),
            ]  # fmt: skip
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=settings_env(settings, **env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def metrics(self) -> dict[str, float]:
        """The samples of the worker's ``/metrics`` whose name starts with ``donut_hole_``."""
        from urllib.request import urlopen

        with urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            if line.startswith("donut_hole_"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL to the main process and its pool processes at once: no shutdown, no acknowledgement."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(30)
        self.kill()


def wait_for_batch(
    settings: Settings, batch_id: str, *, worker: Worker, timeout_s: float = 120
) -> dict[str, int]:
    """Poll the batch's counts until every document is done, failed or needs_review (and its listing is
    over)."""
    deadline = time.monotonic() + timeout_s
    with database(settings) as sessions:
        while True:
            with session_scope(sessions) as session:
                counts = repository.batch_progress(session, batch_id=batch_id)
                batch = repository.get_batch(session, batch_id=batch_id)
                listing_over = batch is not None and batch.status.value != "expanding"
            ended = counts["done"] + counts["failed"] + counts["needs_review"]
            if listing_over and counts["total"] and ended == counts["total"]:
                return counts
            if listing_over and batch is not None and batch.status.value == "failed":
                return counts
            if worker.process.poll() is not None:
                pytest.fail(f"the worker exited ({worker.process.returncode}):\n{worker.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"batch {batch_id} not finished after {timeout_s} s: {counts}\n{worker.log_tail()}"
                )
            time.sleep(0.2)


def kill_while_reading(
    settings: Settings, batch_id: str, worker: Worker, *, min_done: int = 2, timeout_s: float = 120
) -> list[str]:
    """SIGKILL ``worker`` while it reads a group, once ``min_done`` documents are stored; returns the ids
    it was reading (``processing`` at the kill)."""
    from sqlalchemy import select

    from donut_hole.db import Document

    deadline = time.monotonic() + timeout_s
    with database(settings) as sessions:
        while True:
            with session_scope(sessions) as session:
                rows = session.execute(
                    select(Document.status, Document.id).where(Document.batch_id == batch_id)
                )
                statuses = [(status.value, document_id) for status, document_id in rows]
            done = sum(status == "done" for status, _ in statuses)
            processing = [document_id for status, document_id in statuses if status == "processing"]
            if done >= min_done and processing:
                worker.kill()
                return processing
            assert done < len(statuses), "the worker finished before it could be killed"
            assert time.monotonic() < deadline, f"no progress:\n{worker.log_tail()}"
            time.sleep(0.02)
