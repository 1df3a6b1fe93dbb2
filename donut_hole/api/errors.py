"""Typed errors of the layers below, answered as HTTP errors with a JSON body ``{"detail": "..."}``.

=====================================  ======  ====================================================
raised by the layer below              status  why
=====================================  ======  ====================================================
``BucketNotAllowed``                   403     a bucket outside DONUT_HOLE_ALLOWED_BUCKETS
``EnqueueError`` (other bad input)     422     the request cannot be queued as given; detail says why
``RequestValidationError``             422     malformed body or parameter (the input is not echoed)
SQLAlchemy ``DataError``               422     a value the database cannot hold (a NUL byte, ...)
``BrokerUnavailable``                  503     rows stored, messages not sent; body has ``batch_id``
``TransientStorageError``              503     the object store did not answer; retry later
``StorageError`` (other)               502     the object store refused the write
SQLAlchemy ``OperationalError``        503     the database is unreachable; retry later
anything else                          500     a bug; the body has only the request id
=====================================  ======  ====================================================

Bodies hold no host names, ports, file-system paths, object reprs or echoes of the request: the details go
to the log, under the request id that the body (``request_id``) and the ``X-Request-ID`` header carry.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError

from donut_hole.api.request_id import HEADER, request_id_of
from donut_hole.logs import log_event
from donut_hole.storage import StorageError, TransientStorageError
from donut_hole.worker.enqueue import BucketNotAllowed, EnqueueError
from donut_hole.worker.sending import BrokerUnavailable

log = logging.getLogger("donut_hole.api")

RETRY_AFTER_S = "5"
MAX_DETAIL = 300  # characters of a readable reason; longer ones echo the request


def public_detail(text: str, request: Request) -> str:
    """``text`` without the store's and data directory's paths, clipped to :data:`MAX_DETAIL` characters."""
    settings = getattr(request.app.state, "settings", None)
    if settings is not None:
        roots = {str(settings.data_dir.resolve()), str(settings.data_dir)}
        if "://" not in settings.storage_url:
            roots.add(settings.storage_url)
        for root in sorted(roots, key=len, reverse=True):
            if root and root != ".":
                text = text.replace(root, "<store>")
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


def _answer(request: Request, status: int, body: dict[str, Any], **headers: str) -> JSONResponse:
    """A JSON error; every answer carries ``X-Request-ID``, a 500 (nothing else to say) has it in the body."""
    request_id = request_id_of(request)
    if status >= 500 and "batch_id" not in body and "Retry-After" not in headers:
        body = {**body, "request_id": request_id}
    return JSONResponse(body, status_code=status, headers={HEADER: request_id, **headers})


async def _enqueue_error(request: Request, exc: Exception) -> JSONResponse:
    status = 403 if isinstance(exc, BucketNotAllowed) else 422
    return _answer(request, status, {"detail": public_detail(str(exc), request)})


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [
        {
            "loc": list(error.get("loc", ()))[:6],
            "msg": str(error.get("msg", ""))[:200],
            "type": error.get("type"),
        }
        for error in errors[:20]
    ]
    return _answer(request, 422, {"detail": detail})


async def _data_error(request: Request, exc: Exception) -> JSONResponse:
    log_event(log, "api.data_error", level=logging.WARNING, request_id=request_id_of(request), error=str(exc))
    return _answer(
        request, 422, {"detail": "a value in the request cannot be stored or searched (e.g. a NUL byte)"}
    )


async def _broker_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # No Retry-After: the batch is already stored, and sending the request again would store a second one.
    batch_id = exc.batch_id if isinstance(exc, BrokerUnavailable) else None
    log_event(
        log, "api.broker_unavailable", level=logging.ERROR, request_id=request_id_of(request),
        batch_id=batch_id, error=str(exc),
    )  # fmt: skip
    detail = (
        f"batch {batch_id} is stored but the broker is unreachable; its documents stay queued and a worker "
        "sends them once the broker is back: do not send this request again"
    )
    return _answer(request, 503, {"detail": detail, "batch_id": batch_id})


def log_storage_error(request: Request, exc: Exception) -> None:
    """The store's own words go to the log, under the request id, never into the answer."""
    log_event(
        log, "api.storage_error", level=logging.ERROR, request_id=request_id_of(request),
        path=request.url.path, error=str(exc),
    )  # fmt: skip


async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
    transient = isinstance(exc, TransientStorageError)
    log_storage_error(request, exc)
    if transient:
        body = {"detail": "the object store is unavailable; retry later"}
        return _answer(request, 503, body, **{"Retry-After": RETRY_AFTER_S})
    return _answer(request, 502, {"detail": "the object store refused the scan; see the server log"})


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log_event(
        log, "api.database_unavailable", level=logging.ERROR, request_id=request_id_of(request),
        path=request.url.path, error=str(exc),
    )  # fmt: skip
    body = {"detail": "the database is unavailable; retry later"}
    return _answer(request, 503, body, **{"Retry-After": RETRY_AFTER_S})


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error(
        "api.internal_error",
        exc_info=exc,
        extra={"fields": {"request_id": request_id_of(request), "path": request.url.path}},
    )
    return _answer(request, 500, {"detail": "internal error; quote the request id to the operators"})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(EnqueueError, _enqueue_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DataError, _data_error)
    app.add_exception_handler(BrokerUnavailable, _broker_unavailable)
    app.add_exception_handler(StorageError, _storage_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(Exception, _internal_error)
