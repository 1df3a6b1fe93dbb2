"""Typed errors of the layers below, answered as HTTP errors with a JSON body ``{"detail": "..."}``.

=====================================  ======  ====================================================
raised by the layer below              status  why
=====================================  ======  ====================================================
``BucketNotAllowed``                   403     a bucket outside DONUT_HOLE_ALLOWED_BUCKETS
``EnqueueError`` (other bad input)     422     the request cannot be queued as given; detail says why
``BrokerUnavailable``                  503     rows stored, messages not sent; body has ``batch_id``
``TransientStorageError``              503     the object store did not answer; retry later
``StorageError`` (other)               502     the object store refused the write
SQLAlchemy ``OperationalError``        503     the database is unreachable; retry later
=====================================  ======  ====================================================

Details of infrastructure failures stay in the log (they may hold host names); the client gets a sentence.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from donut_hole.logs import log_event
from donut_hole.storage import StorageError, TransientStorageError
from donut_hole.worker.enqueue import BrokerUnavailable, BucketNotAllowed, EnqueueError

log = logging.getLogger("donut_hole.api")

RETRY_AFTER_S = "5"


async def _enqueue_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=403 if isinstance(exc, BucketNotAllowed) else 422)


async def _broker_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # No Retry-After: the batch is already stored, and sending the request again would store a second one.
    batch_id = exc.batch_id if isinstance(exc, BrokerUnavailable) else None
    log_event(log, "api.broker_unavailable", level=logging.ERROR, batch_id=batch_id, error=str(exc))
    return JSONResponse({"detail": str(exc), "batch_id": batch_id}, status_code=503)


async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
    transient = isinstance(exc, TransientStorageError)
    log_event(log, "api.storage_error", level=logging.ERROR, path=request.url.path, error=str(exc))
    if transient:
        return JSONResponse(
            {"detail": "the object store is unavailable; retry later"},
            status_code=503,
            headers={"Retry-After": RETRY_AFTER_S},
        )
    return JSONResponse({"detail": "the object store refused the scan; see the server log"}, status_code=502)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log_event(log, "api.database_unavailable", level=logging.ERROR, path=request.url.path, error=str(exc))
    return JSONResponse(
        {"detail": "the database is unavailable; retry later"},
        status_code=503,
        headers={"Retry-After": RETRY_AFTER_S},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(EnqueueError, _enqueue_error)
    app.add_exception_handler(BrokerUnavailable, _broker_unavailable)
    app.add_exception_handler(StorageError, _storage_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
