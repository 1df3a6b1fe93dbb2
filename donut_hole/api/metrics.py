"""Prometheus metrics of the API: requests by route and status, latency, documents queued.

=============================================  =========  =============================================
name                                           type       meaning
=============================================  =========  =============================================
donut_hole_api_requests_total                  counter    requests answered, by method, route, status
donut_hole_api_request_duration_seconds        histogram  time to answer, by method and route
donut_hole_api_documents_queued_total          counter    documents queued, by kind (upload, uris)
donut_hole_api_batches_queued_total            counter    batches queued, by kind (upload, uris, prefix)
=============================================  =========  =============================================

``route`` is the path template (``/v1/batches/{batch_id}``), never the raw path, so ids do not multiply
series; requests answered before routing (no route matches, or a body refused on its declared
``Content-Length``) are counted under ``"unmatched"``. The metrics live in their own
registry (with the process and GC collectors), apart from the worker's. When ``PROMETHEUS_MULTIPROC_DIR``
is set (several server processes), :func:`exposition` serves the sum over the processes.
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED = "unmatched"

REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

REQUESTS = Counter(
    "donut_hole_api_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "donut_hole_api_request_duration_seconds",
    "Seconds from a request's arrival to the end of its response, by method and route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
DOCUMENTS_QUEUED = Counter(
    "donut_hole_api_documents_queued",
    "Documents written and queued through the API, by kind (upload, read, uris).",
    ["kind"],
    registry=REGISTRY,
)
BATCHES_QUEUED = Counter(
    "donut_hole_api_batches_queued",
    "Batches accepted through the API, by kind (upload, read, uris, prefix).",
    ["kind"],
    registry=REGISTRY,
)


class RequestMetrics:
    """Pure ASGI middleware counting every HTTP request in :data:`REQUESTS` and :data:`REQUEST_SECONDS`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            # The router writes the matched route into the (shared) scope.
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            REQUEST_SECONDS.labels(scope["method"], route).observe(time.perf_counter() - start)


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its content type."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
