"""The worker's readiness: a file written once the model was checked and the pool is up, and its probe.

``donut-hole worker`` loads and runs its model before Celery starts (a bad folder stops it with the reason),
then :func:`watch` writes ``DONUT_HOLE_READY_FILE`` (default ``/tmp/donut-hole-worker.ready``) when Celery
says the worker is ready and removes it at shutdown. The probe (compose healthcheck, Kubernetes
readinessProbe) is ``python -m donut_hole.worker.ready``: exit 0 when the file names a live process.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_READY_FILE = Path("/tmp/donut-hole-worker.ready")


def ready_file() -> Path:
    return Path(os.environ.get("DONUT_HOLE_READY_FILE") or DEFAULT_READY_FILE)


def mark_ready(path: Path, info: dict[str, Any]) -> None:
    """Write ``{"pid": ..., **info}`` atomically (a probe never reads half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"pid": os.getpid(), **info}), encoding="utf-8")
    partial.replace(path)


def is_ready(path: Path) -> tuple[bool, str]:
    """Whether ``path`` names a live process, and why not."""
    try:
        pid = int(json.loads(path.read_text(encoding="utf-8"))["pid"])
    except FileNotFoundError:
        return False, f"{path} does not exist: the worker has not checked its model or is not up yet"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return False, f"{path} is unreadable: {exc}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, f"the worker {pid} named in {path} is gone"
    except PermissionError:
        pass  # alive, under another user
    return True, f"worker {pid} ready"


def watch(path: Path, info: dict[str, Any]) -> None:
    """Write ``path`` when this process's Celery worker is ready, remove it when it shuts down."""
    from celery import signals

    path.unlink(missing_ok=True)  # a file left by a killed worker is not this one's readiness

    def _ready(**_: Any) -> None:
        mark_ready(path, info)

    def _gone(**_: Any) -> None:
        path.unlink(missing_ok=True)

    signals.worker_ready.connect(_ready, weak=False)
    signals.worker_shutdown.connect(_gone, weak=False)


def main() -> int:
    ok, why = is_ready(ready_file())
    if not ok:
        sys.stderr.write(f"not ready: {why}\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
