"""``/v1/documents``: upload one scan (stored, then queued) and read a document's status and fields."""

from __future__ import annotations

import hashlib
import logging
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile

from donut_hole.api import metrics
from donut_hole.api.deps import ApiKeyDep, ServicesDep, SessionDep, SettingsDep
from donut_hole.api.idempotency import ClientKeyDep, claim, submit_once
from donut_hole.api.images import SNIFF_BYTES, count_pages, sniff_image_type
from donut_hole.api.queries import documents_public
from donut_hole.api.schemas import DocumentPublic, UploadAccepted
from donut_hole.db import repository
from donut_hole.logs import log_event
from donut_hole.settings import Settings
from donut_hole.worker import enqueue

log = logging.getLogger("donut_hole.api")

router = APIRouter(prefix="/v1/documents", tags=["documents"], dependencies=[ApiKeyDep])


@router.post(
    "",
    status_code=202,
    responses={
        413: {
            "description": "The scans are larger than DONUT_HOLE_MAX_IMAGE_BYTES together, or one has more "
            "pages than DONUT_HOLE_MAX_PAGES."
        },
        415: {"description": "Not a JPEG, PNG, TIFF, WebP, BMP or GIF image, nor a PDF."},
        422: {
            "description": "No file, or an empty one; a callback_url that is not allowed; an "
            "Idempotency-Key already sent with another request."
        },
        503: {"description": "Object store, broker or database unreachable."},
    },
)
def upload_document(
    file: Annotated[
        list[UploadFile],
        File(
            description="A scan: JPEG, PNG, WebP, BMP or GIF, or a PDF or TIFF of one or more pages. Repeat "
            "the part for several scans in one batch (together at most DONUT_HOLE_MAX_IMAGE_BYTES)."
        ),
    ],
    settings: SettingsDep,
    services: ServicesDep,
    session: SessionDep,
    response: Response,
    idempotency_key: ClientKeyDep,
    callback_url: Annotated[
        str | None,
        Form(
            max_length=2048,
            description="Receives one signed POST once the document (all its pages) is read; must be under "
            "DONUT_HOLE_CALLBACK_ALLOWED_URLS (else 422).",
        ),
    ] = None,
    review_threshold: Annotated[
        float | None,
        Form(
            ge=0.0,
            le=1.0,
            description="A document with a field below this confidence ends needs_review instead of done; "
            "default: DONUT_HOLE_REVIEW_THRESHOLD.",
        ),
    ] = None,
) -> UploadAccepted:
    """Store the scans in the object store and queue them as one batch, a document per scan.

    The type is read from each file's first bytes, not from its name or declared content type; one bad
    file refuses the whole request (nothing is stored). A PDF or multi-page TIFF becomes one document per
    page once a worker opens it: ``document_ids`` are each file's page 1 (in upload order),
    ``document_id`` the first file's, and ``GET /v1/documents/{id}`` lists a file's other pages under
    ``pages``. With an ``Idempotency-Key`` header, a retry of the same upload returns the batch and
    documents the first try made, and stores nothing twice.
    """
    scans = [
        checked_scan(part, settings, max_pages=settings.max_pages, setting="DONUT_HOLE_MAX_PAGES")
        for part in file
    ]
    names = [part.filename or "upload" for part in file]
    digests = [hashlib.sha256(data).digest() for data, _ in scans]
    threshold = None if review_threshold is None else repr(review_threshold)
    request = claim(idempotency_key, *names, callback_url, *digests, *([threshold] if threshold else []))

    def submit() -> UploadAccepted:
        batch_id, document_ids = enqueue.submit_uploads(
            services,
            files=[(data, name) for (data, _), name in zip(scans, names, strict=True)],
            session=session,
            callback_url=callback_url,
            review_threshold=review_threshold,
            idempotency=request,
        )
        metrics.BATCHES_QUEUED.labels("upload").inc()
        metrics.DOCUMENTS_QUEUED.labels("upload").inc(len(document_ids))
        log_event(
            log,
            "api.upload",
            batch_id=batch_id,
            documents=len(document_ids),
            bytes=sum(len(data) for data, _ in scans),
            media_types=sorted({media_type for _, media_type in scans}),
        )
        return UploadAccepted(batch_id=batch_id, document_id=document_ids[0], document_ids=document_ids)

    def replay(batch_id: str) -> UploadAccepted:  # where the first try's documents stand now
        firsts = repository.first_pages(session, batch_id=batch_id)
        return UploadAccepted(
            batch_id=batch_id,
            document_id=firsts[0].id,
            document_ids=[document.id for document in firsts],
            status=firsts[0].status,
        )

    accepted = submit_once(session, request, response, submit=submit, replay=replay)
    response.headers["Location"] = f"/v1/documents/{accepted.document_id}"
    return accepted


def checked_scan(file: UploadFile, settings: Settings, *, max_pages: int, setting: str) -> tuple[bytes, str]:
    """The uploaded scan's bytes and media type, once its size, content and page count pass; else the
    HTTPException to answer (413 too large or too many pages, 422 empty, 415 not a scan)."""
    limit = settings.max_image_bytes
    data = file.file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, detail=f"the scan is larger than {limit} bytes (DONUT_HOLE_MAX_IMAGE_BYTES)")
    if not data:
        raise HTTPException(422, detail="the uploaded file is empty")
    media_type = sniff_image_type(data[:SNIFF_BYTES])
    if media_type is None:
        raise HTTPException(
            415,
            detail="the file is not a JPEG, PNG, TIFF, WebP, BMP or GIF image nor a PDF "
            "(checked by its content)",
        )
    pages = count_pages(data)
    if pages is not None and pages > max_pages:
        raise HTTPException(413, detail=f"the file has {pages} pages, the limit is {max_pages} ({setting})")
    return data, media_type


@router.get("/{document_id}", responses={404: {"description": "No document has this id."}})
def get_document(document_id: str, session: SessionDep, settings: SettingsDep) -> DocumentPublic:
    """A document's status (``queued``, ``processing``, ``done``, ``failed``), error, fields, confidence;
    for a page of a PDF or multi-page TIFF, its page number and every page of its source."""
    document = repository.get_document(session, document_id=document_id)
    if document is None:
        raise HTTPException(404, detail="this document does not exist")
    return documents_public(session, documents=[document], settings=settings)[0]
