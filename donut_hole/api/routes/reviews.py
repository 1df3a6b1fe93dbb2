"""Human review: what waits for a person, a document's scan, and a reviewer's corrections; the review page.

``GET /v1/reviews`` lists the documents that ended ``needs_review`` (a field below the review threshold),
oldest first. A reviewer sees one (``GET /v1/reviews/{id}``: its fields, confidences and boxes, and
``/image``: its page as a picture) and sends every field back as it should read
(``POST /v1/reviews/{id}``): that is stored as a new extraction (the reviewer's, beside the model's, never
over it) and the document ends ``done``. ``GET /review`` is the page people use for it. API keys and
reviewer keys (``DONUT_HOLE_REVIEWER_KEYS``) may use these routes; reviewer keys nothing else.
"""

from __future__ import annotations

import io
import logging
from importlib import resources
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Response

from donut_hole.api.deps import ReviewerDep, ServicesDep, SessionDep, SettingsDep
from donut_hole.api.queries import documents_public, public_uri
from donut_hole.api.schemas import DocumentPublic, ReviewItem, ReviewList, ReviewSubmit
from donut_hole.db import DocumentStatus, repository
from donut_hole.logs import log_event
from donut_hole.scans import DocumentError, load_page
from donut_hole.storage import StorageError

log = logging.getLogger("donut_hole.api")

router = APIRouter(tags=["reviews"])

IMAGE_SIDE = 1600
"""Longest side of a page as the review page shows it, in pixels."""
PAGE_FILES = {"": ("index.html", "text/html; charset=utf-8"), "review.js": ("review.js", "text/javascript"),
              "review.css": ("review.css", "text/css")}  # fmt: skip
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No document has this id."}}


@router.get("/v1/reviews")
def list_reviews(
    session: SessionDep,
    settings: SettingsDep,
    reviewer: ReviewerDep,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0),
) -> ReviewList:
    """Documents that wait for review (status ``needs_review``), oldest read first."""
    documents, total = repository.reviews(session, limit=limit, offset=offset)
    latest = repository.latest_extractions(session, document_ids=[d.id for d in documents])
    items = []
    for document in documents:
        extraction = latest.get(document.id)
        confidences = (
            [f.confidence for f in extraction.fields if f.confidence is not None] if extraction else []
        )
        items.append(
            ReviewItem(
                document_id=document.id,
                batch_id=document.batch_id,
                uri=public_uri(document.uri, settings),
                page=document.page,
                finished_at=document.finished_at,
                confidence=extraction.confidence if extraction else None,
                lowest=min(confidences) if confidences else None,
                fields=len(extraction.fields) if extraction else 0,
            )
        )
    more = offset + len(items) < total
    return ReviewList(reviews=items, total=total, next_offset=offset + len(items) if more else None)


@router.get("/v1/reviews/{document_id}", responses=NOT_FOUND)
def get_review(
    document_id: str, session: SessionDep, settings: SettingsDep, reviewer: ReviewerDep
) -> DocumentPublic:
    """A document as a reviewer sees it: status, fields with their confidences and boxes."""
    document = repository.get_document(session, document_id=document_id)
    if document is None:
        raise HTTPException(404, detail="this document does not exist")
    return documents_public(session, documents=[document], settings=settings)[0]


@router.get(
    "/v1/reviews/{document_id}/image",
    responses={**NOT_FOUND, 200: {"content": {"image/jpeg": {}}}, 409: {"description": "Unreadable scan."}},
    response_class=Response,
)
def review_image(
    document_id: str, session: SessionDep, services: ServicesDep, settings: SettingsDep, reviewer: ReviewerDep
) -> Response:
    """The document's page as a JPEG of at most 1600 pixels a side, upright, as the model read it."""
    document = repository.get_document(session, document_id=document_id)
    if document is None:
        raise HTTPException(404, detail="this document does not exist")
    try:
        data = services.store.get(document.source_uri, max_bytes=settings.max_image_bytes)
        page = load_page(
            data,
            page=document.page,
            target_size=(IMAGE_SIDE, IMAGE_SIDE),
            max_pixels=settings.max_image_pixels,
        )
    except StorageError as exc:
        log_event(log, "review.image_unavailable", level=logging.WARNING, document_id=document_id)
        raise HTTPException(503, detail="the scan cannot be fetched from the store now; try again") from exc
    except DocumentError as exc:
        raise HTTPException(409, detail=f"the scan cannot be shown: {exc.reason}") from exc
    page.thumbnail((IMAGE_SIDE, IMAGE_SIDE))
    out = io.BytesIO()
    page.save(out, format="JPEG", quality=85)
    return Response(
        out.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"}
    )


@router.post(
    "/v1/reviews/{document_id}",
    responses={
        **NOT_FOUND,
        409: {"description": "The document has no reading to review, or is still being read."},
        422: {"description": "The fields sent are not the reading's (every field, in order)."},
    },
)
def submit_review(
    document_id: str, body: ReviewSubmit, session: SessionDep, settings: SettingsDep, reviewer: ReviewerDep
) -> DocumentPublic:
    """Store a reviewer's version of the document (every field of its latest reading, in order, edited or
    not) as a new extraction; the document ends ``done``. The model's reading is kept."""
    document = repository.get_document(session, document_id=document_id)
    if document is None:
        raise HTTPException(404, detail="this document does not exist")
    if document.status not in (DocumentStatus.needs_review, DocumentStatus.done):
        raise HTTPException(
            409, detail=f"this document is {document.status}: only a read document is reviewed"
        )
    try:
        repository.save_review(
            session,
            document_id=document_id,
            reviewer=reviewer,
            values=[(f.name, f.value) for f in body.fields],
        )
    except repository.InvalidInput as exc:
        raise HTTPException(422, detail=str(exc)) from exc
    session.flush()
    log_event(log, "review.saved", document_id=document_id, reviewer=reviewer, fields=len(body.fields))
    return documents_public(session, documents=[document], settings=settings)[0]


@router.get("/review", include_in_schema=False)
@router.get("/review/{name}", include_in_schema=False)
def review_page(name: str = "") -> Response:
    """The review page (HTML, its script and style): it asks for a key and talks to the routes above."""
    if name not in PAGE_FILES:
        raise HTTPException(404, detail="no such file")
    file, media_type = PAGE_FILES[name]
    body = resources.files("donut_hole.api").joinpath("review_page", file).read_bytes()
    return Response(
        body,
        media_type=media_type,
        headers={
            "Content-Security-Policy": PAGE_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        },
    )
