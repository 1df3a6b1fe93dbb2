"""Structured logs: one JSON object per line, with the ids the line is about."""

from __future__ import annotations

import json
import logging

from donut_hole.logs import JsonFormatter, log_event


def test_log_lines_are_json_with_ids() -> None:
    logger = logging.getLogger("test.logs.json")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        log_event(logger, "document.done", batch_id="b1", document_id="d1", latency_ms=1.5)
    finally:
        logger.removeHandler(handler)
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["event"] == "document.done" and line["level"] == "INFO"
    assert (line["batch_id"], line["document_id"], line["latency_ms"]) == ("b1", "d1", 1.5)
    assert line["ts"].endswith("Z") and isinstance(line["pid"], int)
