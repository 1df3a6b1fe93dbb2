"""``/v1/read``: one small scan read while the client waits, through the same queue and workers.

The scan is stored and queued as ``POST /v1/documents`` does (same limits, same auth, at most
``DONUT_HOLE_READ_MAX_PAGES`` pages); the request then waits, up to ``wait_s`` (at most
``DONUT_HOLE_READ_WAIT_S``), until a worker has read every page: 200 with each page's fields. Past the wait
it answers 202 with the batch and document, whose reading goes on (poll ``GET /v1/documents/{id}``).
The API process loads no model: a read costs it one waiting request thread.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import APIRouter, File, Query, Response, UploadFile

from donut_hole.api import metrics
from donut_hole.api.deps import ApiKeyDep, ServicesDep, SessionDep, SettingsDep
from donut_hole.api.queries import documents_public
from donut_hole.api.routes.documents import checked_scan
from donut_hole.api.schemas import ReadResult
from donut_hole.db import repository, session_scope
from donut_hole.logs import log_event
from donut_hole.worker import enqueue

log = logging.getLogger("donut_hole.api")

router = APIRouter(prefix="/v1/read", tags=["documents"], dependencies=[ApiKeyDep])
POLL_S = 0.1


@router.post(
    "",
    responses={
        202: {"model": ReadResult, "description": "Not read within the wait: the reading goes on."},
        413: {
            "description": "Larger than DONUT_HOLE_MAX_IMAGE_BYTES, or more pages than "
            "DONUT_HOLE_READ_MAX_PAGES."
        },
        415: {"description": "Not a JPEG, PNG, TIFF, WebP, BMP or GIF image, nor a PDF."},
        422: {"description": "No file, or an empty one."},
        503: {"description": "Object store, broker or database unreachable."},
    },
)
def read_now(
    file: Annotated[UploadFile, File(description="One scan: an image, or a PDF or TIFF of a few pages.")],
    settings: SettingsDep,
    services: ServicesDep,
    session: SessionDep,
    response: Response,
    wait_s: Annotated[
        float | None,
        Query(
            gt=0, le=600, description="Longest wait for the answer (default and cap: DONUT_HOLE_READ_WAIT_S)."
        ),
    ] = None,
) -> ReadResult:
    """Read one scan now: 200 with every page's fields once a worker has read them all, or 202 with the
    batch and document when that takes longer than the wait (the reading goes on)."""
    data, media_type = checked_scan(
        file, settings, max_pages=settings.read_max_pages, setting="DONUT_HOLE_READ_MAX_PAGES"
    )
    batch_id, document_id = enqueue.submit_upload(
        services, data=data, filename=file.filename or "upload", session=session
    )
    metrics.BATCHES_QUEUED.labels("read").inc()
    metrics.DOCUMENTS_QUEUED.labels("read").inc()
    log_event(
        log, "api.read", batch_id=batch_id, document_id=document_id, bytes=len(data), media_type=media_type
    )
    deadline = time.monotonic() + min(wait_s or settings.read_wait_s, settings.read_wait_s)
    while True:
        with session_scope(services.sessions) as polling:  # a new transaction: the workers' commits show
            batch = repository.get_batch(polling, batch_id=batch_id)
            progress = repository.batch_progress(polling, batch_id=batch_id)
            state = repository.batch_state(batch.status, progress) if batch is not None else "failed"
            if state in ("finished", "failed"):
                first = repository.get_document(polling, document_id=document_id)
                pages = repository.pages_of(polling, document=first) if first is not None else []
                return ReadResult(
                    batch_id=batch_id,
                    document_id=document_id,
                    status=state,
                    pages=documents_public(polling, documents=pages, settings=settings),
                )
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    response.status_code = 202
    response.headers["Location"] = f"/v1/documents/{document_id}"
    return ReadResult(batch_id=batch_id, document_id=document_id, status="accepted", pages=[])
