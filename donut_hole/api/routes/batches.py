"""``/v1/batches``: queue scans already stored (URIs or a prefix), follow a batch, read its results."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import AwareDatetime
from sqlalchemy.orm import Session

from donut_hole.api import metrics
from donut_hole.api.deps import ApiKeyDep, ServicesDep, SessionDep, SettingsDep
from donut_hole.api.errors import log_storage_error
from donut_hole.api.idempotency import ClientKeyDep, claim, submit_once
from donut_hole.api.queries import public_text, public_uri
from donut_hole.api.schemas import (
    MAX_PAGE,
    BatchCreate,
    BatchDeleted,
    BatchList,
    BatchPublic,
    BatchResults,
    CallbackPublic,
    DocumentCounts,
    ResultPublic,
)
from donut_hole.db import Batch, repository
from donut_hole.storage import StorageError, TransientStorageError
from donut_hole.worker import enqueue, recovery, retention

router = APIRouter(prefix="/v1/batches", tags=["batches"], dependencies=[ApiKeyDep])

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No batch has this id."}}


def batch_public(session: Session, batch_id: str) -> BatchPublic:
    batch = repository.get_batch(session, batch_id=batch_id)
    if batch is None:
        raise HTTPException(404, detail="this batch does not exist")
    return _public(batch, repository.batch_progress(session, batch_id=batch_id))


def _public(batch: Batch, progress: dict[str, int]) -> BatchPublic:
    counts = dict(progress)
    total = counts.pop("total")
    return BatchPublic(
        id=batch.id,
        created_at=batch.created_at,
        source=batch.source,
        status=repository.batch_state(batch.status, progress),
        error=batch.error,
        counts=DocumentCounts(**counts),
        total=total,
        callback=None
        if batch.callback_status is None
        else CallbackPublic(
            status=batch.callback_status,
            attempts=batch.callback_attempts,
            delivered_at=batch.callback_delivered_at,
            error=batch.callback_error,
        ),
    )


@router.post(
    "",
    status_code=202,
    responses={
        403: {"description": "A bucket is not in DONUT_HOLE_ALLOWED_BUCKETS (nor the store's own)."},
        422: {
            "description": "Malformed body or URI, a callback_url that is not allowed, or an "
            "Idempotency-Key already sent with another request."
        },
        503: {"description": "Broker or database unreachable."},
    },
)
def create_batch(
    body: BatchCreate,
    services: ServicesDep,
    session: SessionDep,
    response: Response,
    idempotency_key: ClientKeyDep,
) -> BatchPublic:
    """Queue the scans at ``uris``, or every object under ``prefix`` (listed by a task).

    The batch and its documents are written through the request's session and committed before the
    messages are sent. A prefix batch starts with status ``expanding`` and no documents; poll
    ``GET /v1/batches/{id}``. With ``callback_url`` the batch posts once to it when it is finished. With an
    ``Idempotency-Key`` header, a retry of the same request returns the batch the first try made.
    """
    request = claim(idempotency_key, json.dumps(body.model_dump(mode="json"), sort_keys=True))

    def submit() -> str:
        if body.uris is not None:
            batch_id = enqueue.submit_uris(
                services,
                uris=body.uris,
                source="api",
                session=session,
                callback_url=body.callback_url,
                review_threshold=body.review_threshold,
                idempotency=request,
            )
            metrics.BATCHES_QUEUED.labels("uris").inc()
            metrics.DOCUMENTS_QUEUED.labels("uris").inc(len(body.uris))
            return batch_id
        assert body.prefix is not None  # BatchCreate holds exactly one of the two
        batch_id = enqueue.submit_prefix(
            services,
            prefix_uri=body.prefix,
            session=session,
            callback_url=body.callback_url,
            review_threshold=body.review_threshold,
            idempotency=request,
        )
        metrics.BATCHES_QUEUED.labels("prefix").inc()
        return batch_id

    batch_id = submit_once(session, request, response, submit=submit, replay=lambda earlier: earlier)
    response.headers["Location"] = f"/v1/batches/{batch_id}"
    return batch_public(session, batch_id)


@router.get("")
def list_batches(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
    finished: Annotated[
        bool | None,
        Query(
            description="true: only batches with nothing left to read; false: only those with work under way."
        ),
    ] = None,
    created_after: Annotated[
        AwareDatetime | None, Query(description="ISO 8601 with a time zone; inclusive.")
    ] = None,
    created_before: Annotated[
        AwareDatetime | None, Query(description="ISO 8601 with a time zone; exclusive.")
    ] = None,
) -> BatchList:
    """Every batch, newest first, one page at a time, each with its progress (as ``GET /v1/batches/{id}``);
    ``total`` counts the batches that match the filters."""
    total, batches = repository.list_batches(
        session,
        limit=limit,
        offset=offset,
        finished=finished,
        created_after=created_after,
        created_before=created_before,
    )
    progress = repository.batches_progress(session, batch_ids=[batch.id for batch in batches])
    items = [_public(batch, progress[batch.id]) for batch in batches]
    return BatchList(total=total, limit=limit, offset=offset, items=items)


@router.get("/{batch_id}", responses=NOT_FOUND)
def get_batch(batch_id: str, session: SessionDep) -> BatchPublic:
    """A batch and its progress: documents per status."""
    return batch_public(session, batch_id)


@router.get("/{batch_id}/results", responses=NOT_FOUND)
def get_batch_results(
    batch_id: str,
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> BatchResults:
    """The batch's documents ordered by URI, each with the fields of its latest extraction; one page."""
    try:
        total = repository.batch_progress(session, batch_id=batch_id)["total"]
        rows = repository.results_for_batch(session, batch_id=batch_id, limit=limit, offset=offset)
    except repository.BatchNotFound:
        raise HTTPException(404, detail="this batch does not exist") from None
    return BatchResults(
        batch_id=batch_id,
        total=total,
        limit=limit,
        offset=offset,
        items=[
            ResultPublic.model_validate(
                {**row, "uri": public_uri(row["uri"], settings), "error": public_text(row["error"], settings)}
            )
            for row in rows
        ],
    )


@router.post(
    "/{batch_id}/retry-failed",
    status_code=202,
    responses={**NOT_FOUND, 503: {"description": "Broker or database unreachable; nothing changed."}},
)
def retry_failed(batch_id: str, services: ServicesDep, session: SessionDep) -> BatchPublic:
    """Queue again the batch's documents that failed for a transient reason (their ``error`` begins with
    ``transient:``: an outage longer than the retry budget); other failures stay as they are."""
    if repository.get_batch(session, batch_id=batch_id) is None:
        raise HTTPException(404, detail="this batch does not exist")
    recovery.retry_failed(services, batch_id=batch_id)
    session.expire_all()
    return batch_public(session, batch_id)


@router.delete(
    "/{batch_id}",
    responses={
        **NOT_FOUND,
        409: {"description": "The batch is not finished: documents are still listed, queued or being read."},
        502: {"description": "The object store refused to delete an upload; the batch is kept."},
        503: {"description": "The database or the object store is unavailable; the batch is kept."},
    },
)
def delete_batch(batch_id: str, services: ServicesDep, request: Request) -> BatchDeleted:
    """Delete a finished batch: its documents, their results, and the scans uploaded for it.

    Scans the batch read from your own buckets stay where they are, and so does an upload that another
    batch also reads. Deleting is final; a batch with work under way is refused (409) until it finishes.
    """
    try:
        deleted = retention.delete_batch(services, batch_id=batch_id)
    except repository.BatchNotFound:
        raise HTTPException(404, detail="this batch does not exist") from None
    except repository.BatchBusy as exc:
        raise HTTPException(409, detail=f"this batch is not finished: {exc.reason}") from None
    except StorageError as exc:
        log_storage_error(request, exc)
        if isinstance(exc, TransientStorageError):
            raise HTTPException(
                503, detail="the object store is unavailable; the batch is kept: retry later"
            ) from None
        raise HTTPException(
            502, detail="the object store refused to delete an upload; the batch is kept: see the server log"
        ) from None
    return BatchDeleted(id=deleted.batch_id, documents=deleted.documents, uploads=deleted.uploads)
