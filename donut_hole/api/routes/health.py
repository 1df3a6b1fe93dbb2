"""``/healthz`` (is this API able to take work?) and ``/metrics`` (Prometheus); neither needs a key."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from kombu import Connection
from sqlalchemy import Engine, text

from donut_hole.api.deps import ServicesDep, SettingsDep
from donut_hole.api.metrics import exposition
from donut_hole.api.schemas import Check, Health
from donut_hole.logs import log_event

log = logging.getLogger("donut_hole.api")

router = APIRouter(tags=["operations"])

BROKER_TIMEOUT_S = 2.0


def check_database(engine: Engine) -> Check:
    """``SELECT 1`` on a pooled connection."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any failure means "not healthy"; the log keeps the details
        log_event(log, "api.health.database", level=logging.WARNING, error=str(exc))
        return Check(ok=False, error=f"unreachable ({type(exc).__name__})")
    return Check(ok=True)


def check_broker(url: str, *, timeout_s: float = BROKER_TIMEOUT_S) -> Check:
    """Open (and close) one connection to the Celery broker, bounded by ``timeout_s``."""
    try:
        with Connection(url, connect_timeout=timeout_s) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout_s)
    except Exception as exc:  # kombu raises several connection error types
        log_event(log, "api.health.broker", level=logging.WARNING, error=str(exc))
        return Check(ok=False, error=f"unreachable ({type(exc).__name__})")
    return Check(ok=True)


@router.get("/healthz", responses={503: {"model": Health, "description": "The database or broker is down."}})
def healthz(services: ServicesDep, settings: SettingsDep) -> JSONResponse:
    """200 when the database answers ``SELECT 1`` and the broker accepts a connection, else 503.

    Both are needed to take work (rows first, then messages), so a readiness probe can use this route.
    """
    database = check_database(services.engine)
    broker = check_broker(settings.broker_url)
    ok = database.ok and broker.ok
    health = Health(status="ok" if ok else "unavailable", database=database, broker=broker)
    return JSONResponse(health.model_dump(), status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def prometheus_metrics() -> Response:
    """Prometheus text exposition of the API's counters and histograms."""
    body, content_type = exposition()
    return Response(content=body, media_type=content_type)
