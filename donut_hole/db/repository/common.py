"""What the repository's parts share: errors, limits, row shapes, and the small helpers of the others."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, TypedDict, TypeVar

from sqlalchemy import (
    ColumnElement,
    String,
    case,
    cast,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from donut_hole.db.models import (
    FIELD_NAME_MAX,
    FIELD_VALUE_MAX,
    Batch,
    Document,
)

ERROR_MAX = 4000  # characters of a failure reason kept in documents.error / batches.error
ID_MAX = 36  # batches.id and documents.id: UUID strings
_CHUNK = 500  # rows per IN (...) list


class RepositoryError(Exception):
    """Base of the errors this module raises on purpose."""


class NotFound(RepositoryError, LookupError):
    pass


class BatchNotFound(NotFound):
    def __init__(self, batch_id: str) -> None:
        super().__init__(f"batch {batch_id!r} does not exist")
        self.batch_id = batch_id


class DocumentNotFound(NotFound):
    def __init__(self, document_id: str) -> None:
        super().__init__(f"document {document_id!r} does not exist")
        self.document_id = document_id


class BatchBusy(RepositoryError):
    """A batch with work under way: its documents still being listed, or some queued or being read."""

    def __init__(self, batch_id: str, *, pending: int) -> None:
        reason = (
            "its documents are still being listed"
            if pending < 0
            else f"{pending} of its documents are still queued or being read"
        )
        super().__init__(f"batch {batch_id!r} is not finished: {reason}")
        self.batch_id = batch_id
        self.reason = reason


class InvalidInput(RepositoryError, ValueError):
    """Arguments that cannot be stored (duplicate URIs, mismatched lengths, an over-long field name)."""


FieldValues = dict[str, str | list[str]]
"""``{"consignee.name": "ACME", "items.name": ["bolt", "nut"]}``: a repeated key path gives a list."""

FieldConfidences = dict[str, float | list[float | None] | None]
"""Shaped like :data:`FieldValues`, one confidence per value: ``{"consignee.name": 0.97, "items.name":
[0.91, 0.88]}`` (``None`` where the extraction stored none)."""

FieldBoxes = dict[str, list[float] | list[list[float] | None] | None]
"""Shaped like :data:`FieldValues`, one box per value: ``{"carrier": [0.1, 0.05, 0.3, 0.09]}`` (``[x0, y0,
x1, y1]``, fractions of the page; ``None`` where the field was not located)."""

_V = TypeVar("_V")


class DeletedBatch(NamedTuple):
    """What :func:`delete_batch` removed: the batch, ``documents`` rows with their extractions, and the
    distinct source URIs those documents read (a PDF's pages: its one file)."""

    batch_id: str
    documents: int
    sources: list[str]


class Idempotency(NamedTuple):
    """A request's ``Idempotency-Key`` as stored: digests of (client, key) and of what it asked for."""

    key_sha256: str
    request_sha256: str


class ResultRow(TypedDict):
    """One document of a batch, flat enough for a table, JSON or CSV.

    ``fields`` maps each key path to its value, or to the list of values when the path repeats
    (list items: ``{"items.name": ["bolt", "nut"]}``); ``data`` is the same extraction as nested JSON,
    repeated items as a list of objects (``{"items": [{"name": "bolt"}, {"name": "nut"}]}``). Both come
    from the document's latest extraction.
    """

    document_id: str
    uri: str
    page: int
    page_count: int | None
    status: str
    error: str | None
    attempts: int
    model_id: int | None
    confidence: float | None
    note: str | None
    fields: FieldValues
    field_confidence: FieldConfidences
    field_boxes: FieldBoxes
    reviewed_by: str | None
    data: dict[str, Any] | None


# ---------------------------------------------------------------------------------------------- helpers


def _dialect_insert(session: Session, entity: type[Any]) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(entity)
    if dialect == "sqlite":
        return sqlite.insert(entity)
    raise RepositoryError(f"unsupported database dialect {dialect!r}")


def is_id(value: object) -> bool:
    """Whether ``value`` can be a row id at all (ids are UUID strings): no NUL byte, at most 36 characters.

    Strings that cannot be ids are answered "not found" without a query (PostgreSQL refuses NUL bytes).
    """
    return isinstance(value, str) and 0 < len(value) <= ID_MAX and "\x00" not in value


def get_batch(session: Session, *, batch_id: str) -> Batch | None:
    return session.get(Batch, batch_id) if is_id(batch_id) else None


def _batch_or_raise(session: Session, batch_id: str) -> Batch:
    batch = get_batch(session, batch_id=batch_id)
    if batch is None:
        raise BatchNotFound(batch_id)
    return batch


def _lock_document(session: Session, document_id: str) -> Document:
    """The document row, locked until the transaction ends (``FOR UPDATE`` on PostgreSQL)."""
    document = session.scalars(
        select(Document)
        .where(Document.id == document_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if document is None:
        raise DocumentNotFound(document_id)
    return document


def _pairs(uris: Sequence[str], sha256s: Sequence[str | None] | None) -> list[tuple[str, str | None]]:
    if isinstance(uris, str):
        raise InvalidInput("uris must be a list of strings, not one string")
    shas: Sequence[str | None] = sha256s if sha256s is not None else [None] * len(uris)
    if len(shas) != len(uris):
        raise InvalidInput(f"{len(uris)} URIs but {len(shas)} sha256 values")
    seen: set[str] = set()
    for uri in uris:
        if not uri:
            raise InvalidInput("a document URI is empty")
        if uri in seen:
            raise InvalidInput(f"URI {uri!r} appears twice")
        seen.add(uri)
    return list(zip(uris, shas, strict=True))


def _field_row(
    name: str, value: str, confidence: float | None, box: Sequence[float] | None = None
) -> dict[str, Any]:
    if not name or len(name) > FIELD_NAME_MAX:
        raise InvalidInput(
            f"field name must have 1 to {FIELD_NAME_MAX} characters, got {len(name)}: {name[:40]!r}"
        )
    kept = [round(float(v), 4) for v in box] if box is not None and len(box) == 4 else None
    return {"name": name, "value": str(value)[:FIELD_VALUE_MAX], "confidence": confidence, "box": kept}


def _threshold(value: float | None) -> float | None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise InvalidInput(f"a review threshold is a confidence between 0 and 1, got {value}")
    return value


def needs_review(
    confidences: Sequence[float | None], threshold: float | None, *, doubtful: bool = False
) -> bool:
    """Whether a reading waits for a person: a threshold applies and the reading is ``doubtful``, has no
    field, or a field whose confidence is below it (a field without a confidence counts as below).

    >>> [needs_review(c, 0.5) for c in ([0.99, 0.4], [0.99], [])], needs_review([0.1], None)
    ([True, False, True], False)
    """
    if threshold is None or threshold <= 0:
        return False
    return doubtful or not confidences or any(c is None or c < threshold for c in confidences)


def put_field(fields: dict[str, _V | list[_V]], name: str, value: _V) -> None:
    """Add one field row to a ``{name: value}`` dict; a repeated key path (list items) becomes a list.

    ``{"items.sku": "A1"}`` + ``("items.sku", "B2")`` → ``{"items.sku": ["A1", "B2"]}``.
    """
    if name not in fields:
        fields[name] = value
        return
    current = fields[name]
    fields[name] = [*current, value] if isinstance(current, list) else [current, value]


def _clip(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def _chunks(items: list[str], size: int = _CHUNK) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _source_uri_sql() -> ColumnElement[str]:
    """:func:`~donut_hole.db.models.source_uri` in SQL (PostgreSQL and SQLite), to sort pages together."""
    suffix = func.length("#page=") + func.length(cast(Document.page, String))
    return case(
        (Document.page == 1, Document.uri),
        else_=func.substr(Document.uri, 1, func.length(Document.uri) - suffix),
    )
