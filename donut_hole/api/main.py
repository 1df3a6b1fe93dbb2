"""The FastAPI application: ``create_app`` wires settings, the services, middleware and routers.

Run it with ``donut-hole api`` or ``uvicorn --factory donut_hole.api.main:create_app``. OpenAPI docs are at
``/docs``. Every ``/v1`` route needs ``Authorization: Bearer <key>`` with a key of ``DONUT_HOLE_API_KEYS``;
with no keys configured the API starts, logs a warning and answers 401 to every ``/v1`` request.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from sqlalchemy.engine import make_url

from donut_hole.api.deps import usable_keys
from donut_hole.api.errors import install_error_handlers
from donut_hole.api.limits import MAX_JSON_BODY_BYTES, MULTIPART_OVERHEAD_BYTES, BodySizeLimit
from donut_hole.api.metrics import RequestMetrics
from donut_hole.api.request_id import RequestId
from donut_hole.api.routes import batches, documents, health, read, reviews, search
from donut_hole.logs import log_event
from donut_hole.services import Services
from donut_hole.settings import Settings, get_settings

log = logging.getLogger("donut_hole.api")

DESCRIPTION = """\
Every `/v1` route needs `Authorization: Bearer <key>` with one of the keys in `DONUT_HOLE_API_KEYS`
(a JSON list); a missing or wrong key is answered with 401. **A server started without keys refuses every
`/v1` request** (401) and logs a warning at startup. `/healthz`, `/metrics` and these docs need no key.

Work is accepted with 202: the rows are written and committed first, then the messages are sent. Poll
`GET /v1/batches/{id}` for progress and `GET /v1/documents/{id}` for a document's fields. Errors are JSON:
`{"detail": ...}`.
"""

DB_CONNECT_TIMEOUT_S = 5  # PostgreSQL: fail a request (or /healthz) instead of hanging on a dead host


def _engine_options(database_url: str) -> dict[str, Any]:
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        return {"connect_args": {"connect_timeout": DB_CONNECT_TIMEOUT_S}}
    return {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One :class:`~donut_hole.services.Services` for the app's lifetime (engine, store, Celery app);
    closed at shutdown."""
    settings: Settings = app.state.settings
    if not usable_keys(settings.api_keys):
        log_event(
            log,
            "api.no_keys",
            level=logging.WARNING,
            message="DONUT_HOLE_API_KEYS is empty: every /v1 request will be refused with 401",
        )
    services = Services(settings, engine_options=_engine_options(settings.database_url))
    app.state.services = services
    try:
        yield
    finally:
        services.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for ``settings`` (default: the process settings from the environment)."""
    settings = settings or get_settings()
    app = FastAPI(
        title="donut-hole",
        summary="Queue scanned logistics documents for a DONUT model and read the extracted fields.",
        description=DESCRIPTION,
        version="1",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    upload_limit = settings.max_image_bytes + MULTIPART_OVERHEAD_BYTES
    app.add_middleware(
        BodySizeLimit,
        default=MAX_JSON_BODY_BYTES,
        limits={("POST", "/v1/documents"): upload_limit, ("POST", "/v1/read"): upload_limit},
    )
    app.add_middleware(RequestMetrics)  # counts the 413s above too
    app.add_middleware(RequestId)  # added last = outermost: every answer carries X-Request-ID
    for module in (batches, documents, read, reviews, search, health):
        app.include_router(module.router)
    return app
