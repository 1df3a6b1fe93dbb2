"""Prometheus metrics of the worker, and the HTTP endpoint that serves them.

Celery's prefork pool runs tasks in child processes, so the counters live in several processes. The
``worker`` command sets ``PROMETHEUS_MULTIPROC_DIR`` (a fresh directory) before anything imports
``prometheus_client``; every process then writes its samples to files there and :func:`start_metrics_server`
(in the parent) serves their sum. Without it (tests, the benchmark) the metrics are ordinary in-process ones.

=============================================  =========  =============================================
name                                           type       meaning
=============================================  =========  =============================================
donut_hole_documents_processed_total           counter    documents read and stored (status ``done``)
donut_hole_documents_failed_total{reason}      counter    documents marked ``failed``, by reason class
donut_hole_documents_skipped_total             counter    redelivered documents already done (no work)
donut_hole_document_retries_total              counter    documents sent back for a later retry
donut_hole_document_latency_seconds            histogram  task start to the document's row committed
donut_hole_forward_seconds                     histogram  one batched generate call (decode excluded)
donut_hole_batch_size                          histogram  documents per forward pass
donut_hole_model_info{name,density,precision,  gauge      1, labelled with the served model: its folder
device}                                                   name, density vs its teacher (``compression.json``;
                                                          1 for a model not made by ``compress``),
                                                          precision and device
=============================================  =========  =============================================
"""

from __future__ import annotations

import os

from prometheus_client import Counter, Gauge, Histogram

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

DOCUMENTS_PROCESSED = Counter("donut_hole_documents_processed", "Documents read and stored.")
DOCUMENTS_FAILED = Counter(
    "donut_hole_documents_failed",
    "Documents marked failed, by reason class (not_found, too_large, unreadable, storage, timeout, "
    "retries_exhausted, internal).",
    ["reason"],
)
DOCUMENTS_SKIPPED = Counter("donut_hole_documents_skipped", "Redelivered documents that were already done.")
DOCUMENT_RETRIES = Counter("donut_hole_document_retries", "Documents sent back for a later retry.")
DOCUMENT_LATENCY = Histogram(
    "donut_hole_document_latency_seconds",
    "Seconds from the task's start to the document's result committed.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600),
)
FORWARD_SECONDS = Histogram(
    "donut_hole_forward_seconds",
    "Seconds of one batched generation (preprocessing and generate).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120),
)
BATCH_SIZE = Histogram(
    "donut_hole_batch_size", "Documents per forward pass.", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)

MODEL_INFO = Gauge(
    "donut_hole_model_info",
    "The model this worker serves (value 1): folder name, density vs its teacher, precision, device.",
    ["name", "density", "precision", "device"],
    multiprocess_mode="max",  # set once by the main process; the pool processes add nothing
)


def set_model_info(*, name: str, density: float | None, precision: str, device: str) -> None:
    """Publish the served model's labels (density ``1`` for a model not made by ``compress``)."""
    MODEL_INFO.labels(
        name=name, density="1" if density is None else f"{density:.3f}", precision=precision, device=device
    ).set(1)


def start_metrics_server(port: int, *, addr: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` on ``port``: the sum over all processes in multiprocess mode, else this process."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        start_http_server(port, addr=addr, registry=registry)
    else:
        start_http_server(port, addr=addr)
