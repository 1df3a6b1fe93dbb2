"""The API's request and response bodies: one pydantic schema per purpose, apart from the ORM tables."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from donut_hole.db import DocumentStatus
from donut_hole.db.models import CallbackStatus
from donut_hole.storage import InvalidLocation, parse_s3_uri

MAX_BATCH_URIS = 10_000
MAX_URI_CHARS = 2048  # an S3 key has at most 1024 bytes; room for the bucket
MAX_PAGE = 1000

Location = Annotated[str, StringConstraints(min_length=1, max_length=MAX_URI_CHARS)]
CallbackUrl = Annotated[str, StringConstraints(min_length=1, max_length=MAX_URI_CHARS)]
FieldValues = dict[str, str | list[str]]
FieldConfidences = dict[str, float | list[float | None] | None]
FieldBoxes = dict[str, list[float] | list[list[float] | None] | None]
FIELD_CONFIDENCE_HELP = (
    "The confidence of each field, in [0, 1], shaped like `fields`: the calibrated probability that the "
    "value is right where the model has a calibration, else the mean probability of the tokens that "
    "spell it (the document's where they could not be lined up); 1 for a reviewer's value."
)
FIELD_BOXES_HELP = (
    "Where each field was read, shaped like `fields`: [x0, y0, x1, y1] as fractions of the page's width "
    "and height (origin top left; multiply by the page's size for pixels), null where not located."
)
ReviewThreshold = Annotated[float, Field(ge=0.0, le=1.0)]


def _check_location(uri: str, *, require_key: bool) -> str:
    """An ``s3://`` URI must parse; any other form (a key of the object store) is left to ``enqueue``."""
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in uri):
        raise ValueError(f"URI contains a control character: {uri!r}")
    if uri.startswith("s3://"):
        try:
            parse_s3_uri(uri, require_key=require_key)
        except InvalidLocation as exc:
            raise ValueError(str(exc)) from None
    return uri


# ------------------------------------------------------------------------------------------------ requests


class BatchCreate(BaseModel):
    """Scans already in the object store: a list of URIs, or one prefix that a task lists.

    ``{"uris": ["s3://scans/2024/a.png", "s3://scans/2024/b.png"]}`` or ``{"prefix": "s3://scans/2024/"}``.
    Keys relative to the configured store (``"2024/a.png"``) are accepted too.
    """

    model_config = ConfigDict(extra="forbid")

    uris: list[Location] | None = Field(
        None, min_length=1, max_length=MAX_BATCH_URIS, description="s3://bucket/key of each scan, no repeats."
    )
    prefix: Location | None = Field(
        None, description="s3://bucket/prefix: every object whose key starts with it, listed by a task."
    )
    callback_url: CallbackUrl | None = Field(
        None,
        description="Receives one signed POST once the batch has no queued or processing document left; "
        "must be under DONUT_HOLE_CALLBACK_ALLOWED_URLS (else 422).",
    )
    review_threshold: ReviewThreshold | None = Field(
        None,
        description="A document of this batch with a field below this confidence ends needs_review "
        "instead of done; default: DONUT_HOLE_REVIEW_THRESHOLD (0 or unset: no review).",
    )

    @field_validator("uris")
    @classmethod
    def _valid_uris(cls, uris: list[str] | None) -> list[str] | None:
        if uris is None:
            return None
        seen: set[str] = set()
        for uri in uris:
            _check_location(uri, require_key=True)
            if uri in seen:
                raise ValueError(f"URI {uri!r} appears twice")
            seen.add(uri)
        return uris

    @field_validator("prefix")
    @classmethod
    def _valid_prefix(cls, prefix: str | None) -> str | None:
        return None if prefix is None else _check_location(prefix, require_key=False)

    @model_validator(mode="after")
    def _exactly_one(self) -> BatchCreate:
        if (self.uris is None) == (self.prefix is None):
            raise ValueError("give exactly one of 'uris' (a list of URIs) or 'prefix' (an s3:// prefix)")
        return self


# ----------------------------------------------------------------------------------------------- responses


class DocumentCounts(BaseModel):
    """Documents of a batch per status."""

    queued: int = 0
    processing: int = 0
    done: int = 0
    failed: int = 0
    needs_review: int = 0


class CallbackPublic(BaseModel):
    """The batch's completion webhook: where its delivery stands (the URL is not shown)."""

    status: CallbackStatus = Field(
        description="waiting: documents left; due: a try is on its way or scheduled; delivered; "
        "failed: every try failed (error has the last reason)."
    )
    attempts: int
    delivered_at: datetime | None
    error: str | None = Field(description='The last failed try, e.g. "HTTP 503"; null after a success.')


class BatchPublic(BaseModel):
    id: str
    created_at: datetime
    source: str
    status: Literal["expanding", "accepted", "finished", "failed"] = Field(
        description="expanding: a task is still listing the prefix; accepted: documents are waiting or "
        "being read; finished: every document is done, failed or needs_review (see counts); failed: the "
        "listing failed "
        "(see error)."
    )
    error: str | None
    counts: DocumentCounts
    total: int
    callback: CallbackPublic | None = Field(None, description="null: the batch has no callback.")


class UploadAccepted(BaseModel):
    batch_id: str
    document_id: str = Field(description="The first file's document (its page 1).")
    document_ids: list[str] = Field(description="Each file's document (its page 1), in upload order.")
    status: DocumentStatus = DocumentStatus.queued


class ModelRef(BaseModel):
    id: int
    name: str


class PageRef(BaseModel):
    """One page of a multi-page source."""

    page: int
    document_id: str
    status: DocumentStatus


class DocumentPublic(BaseModel):
    """A document (one page), its progress, and the fields of its latest extraction (empty until ``done``)."""

    id: str
    batch_id: str
    uri: str = Field(description='Where the page is: the source\'s URI, with "#page=N" after page 1.')
    page: int = Field(1, description="This document's page in its source (1 for a single image).")
    page_count: int | None = Field(
        None, description="Pages of the source; null until a worker has opened it."
    )
    source_sha256: str | None = Field(None, description="sha256 of the source file the worker read.")
    pages: list[PageRef] = Field(
        default_factory=list,
        description="Every page of a multi-page source (this one included), in order; empty otherwise.",
    )
    status: DocumentStatus
    error: str | None = Field(
        description="Why the document failed, or, while it is queued for a retry, why the last attempt "
        'did not finish ("retrying after attempt N: ..."), in words; null otherwise.'
    )
    attempts: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    fields: FieldValues = Field(
        description='Flattened key paths and values: {"consignee.name": "ACME"}; a repeated path '
        'gives a list ({"items.name": ["bolt", "nut"]}).'
    )
    data: dict[str, Any] | None = Field(
        description="The extraction as nested JSON, values unclipped: repeated items as a list of objects."
    )
    confidence: float | None
    field_confidence: FieldConfidences = Field(description=FIELD_CONFIDENCE_HELP)
    field_boxes: FieldBoxes = Field(default_factory=dict, description=FIELD_BOXES_HELP)
    reviewed_by: str | None = Field(
        None, description="Who reviewed the values shown; null: the model's reading."
    )
    note: str | None = Field(
        None,
        description='What is off in the stored reading, e.g. "schema: ... lacks tracking_number", or '
        '"cut: ..." (the reading reached the longest answer the model can write).',
    )
    model: ModelRef | None


class ResultPublic(BaseModel):
    """One document of a batch's results."""

    document_id: str
    uri: str
    page: int = 1
    page_count: int | None = None
    status: DocumentStatus
    error: str | None
    attempts: int
    model_id: int | None
    confidence: float | None
    note: str | None = None
    fields: FieldValues
    field_confidence: FieldConfidences = Field(description=FIELD_CONFIDENCE_HELP)
    field_boxes: FieldBoxes = Field(default_factory=dict, description=FIELD_BOXES_HELP)
    reviewed_by: str | None = None
    data: dict[str, Any] | None = Field(
        None,
        description="The extraction as nested JSON, values unclipped: repeated items as a list of objects "
        '({"items": [{"sku": "A-1", "quantity": "2"}, ...]}).',
    )


class BatchList(BaseModel):
    total: int = Field(description="Batches in all.")
    limit: int
    offset: int
    items: list[BatchPublic] = Field(description="This page of them, newest first.")


class BatchDeleted(BaseModel):
    id: str
    documents: int = Field(description="Document rows deleted (one per page), with their extractions.")
    uploads: int = Field(description="Uploaded scans deleted from the object store.")


class BatchResults(BaseModel):
    batch_id: str
    total: int = Field(description="Documents in the batch.")
    limit: int
    offset: int
    items: list[ResultPublic]


class ReadResult(BaseModel):
    """What ``POST /v1/read`` answers: every page read (200), or where to look later (202)."""

    batch_id: str
    document_id: str = Field(description="The first page's document.")
    status: Literal["accepted", "finished", "failed"] = Field(
        description="finished: every page is done or failed (pages holds them); accepted: still being read."
    )
    pages: list[DocumentPublic] = Field(description="Each page's document, in page order; [] until finished.")


class SearchResult(BaseModel):
    field: str
    value: str
    match: str = Field(description="exact or prefix.")
    case_sensitive: bool
    offset: int
    next_offset: int | None = Field(description="The offset of the next page; null after the last one.")
    items: list[DocumentPublic] = Field(description="Matching documents, oldest first.")


class Check(BaseModel):
    ok: bool
    error: str | None = None


class Health(BaseModel):
    status: str = Field(description='"ok" when every check passed, else "unavailable".')
    database: Check
    broker: Check


class ReviewItem(BaseModel):
    """A document that waits for review."""

    document_id: str
    batch_id: str
    uri: str
    page: int
    finished_at: datetime | None = Field(description="When the model's reading was stored.")
    confidence: float | None = Field(description="The document's confidence.")
    lowest: float | None = Field(description="Its lowest field confidence: why it waits.")
    fields: int


class ReviewList(BaseModel):
    """Documents that wait for review, oldest first."""

    reviews: list[ReviewItem]
    total: int = Field(description="How many documents wait in all.")
    next_offset: int | None = Field(description="The offset of the next page; null on the last.")


class ReviewField(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    value: Annotated[str, StringConstraints(max_length=4096)]


class ReviewSubmit(BaseModel):
    """A reviewer's version of a document: every field of its latest reading, in order, as it should
    read (values edited or not). Sending them approves the document: it ends ``done``."""

    model_config = ConfigDict(extra="forbid")

    fields: list[ReviewField] = Field(max_length=2000)
