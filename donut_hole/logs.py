"""Structured logs: one JSON object per line, with the batch and document ids a line is about.

>>> log_event(logger, "document.done", batch_id="b1", document_id="d1", latency_ms=812.4)  # doctest: +SKIP
{"ts": "2025-01-01T12:00:00.000Z", "level": "INFO", "logger": "donut_hole.worker", "event": "document.done",
 "batch_id": "b1", "document_id": "d1", "latency_ms": 812.4, "pid": 4242}

Fields are passed to the standard ``logging`` call as ``extra={"fields": {...}}``, so third-party log lines
(Celery's own) come out as JSON too, with their message in ``event``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, TextIO

_FIELDS = "fields"


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "event", ...fields, "pid"}``; exceptions go under ``"exc"``."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(getattr(record, _FIELDS, None) or {})
        line["pid"] = record.process or os.getpid()
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def log_event(logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` (a short dotted name such as ``"document.failed"``) with key-value ``fields``."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={_FIELDS: fields})


def configure_json_logging(level: str | int = "INFO", *, stream: TextIO | None = None) -> None:
    """Send every log record of this process to ``stream`` (stderr) as JSON lines, at ``level``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
