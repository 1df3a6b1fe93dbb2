"""Repository functions: every read and write of the pipeline's tables, as plain functions of a session.

They flush but never commit: the caller owns the transaction (``with session_scope(factory) as session``),
so several calls can form one unit of work. They know nothing of Celery or HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Literal, NamedTuple, TypedDict, TypeVar

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    case,
    cast,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, joinedload, selectinload

from donut_hole.db.models import (
    FIELD_NAME_MAX,
    FIELD_VALUE_MAX,
    Batch,
    BatchStatus,
    CallbackStatus,
    Document,
    DocumentStatus,
    Extraction,
    ExtractionSource,
    Field,
    IdempotencyKey,
    Model,
    new_id,
    page_uri,
    source_uri,
    utcnow,
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


# ---------------------------------------------------------------------------------------------- batches


def create_batch(
    session: Session,
    *,
    source: str,
    uris: Sequence[str],
    sha256s: Sequence[str | None] | None = None,
    errors: Sequence[str | None] | None = None,
    expanding: bool = False,
    callback_url: str | None = None,
    idempotency: Idempotency | None = None,
    review_threshold: float | None = None,
) -> Batch:
    """A batch and one ``queued`` document per URI, in the caller's transaction.

    ``errors`` (one per URI, ``None`` for a good one) makes the documents that could not be taken at all
    (an empty or oversized file) ``failed`` from the start, with the reason: one bad file never stops
    the rest. ``expanding=True`` makes a batch whose documents a task will list later
    (:func:`add_documents`); it may start with no URIs. The returned batch's ``documents`` are in the
    order of ``uris``. ``callback_url`` (checked by the caller) is posted to once the batch is finished.
    ``idempotency`` records the request's key with the batch: a second batch under the same key fails the
    commit (IntegrityError), so of two racing requests only one batch is kept (:func:`find_idempotent`).
    """
    if not uris and not expanding:
        raise InvalidInput("a batch needs at least one document URI")
    pairs = _pairs(uris, sha256s)
    reasons = list(errors) if errors is not None else [None] * len(pairs)
    if len(reasons) != len(pairs):
        raise InvalidInput(f"{len(reasons)} errors for {len(pairs)} URIs")
    now = utcnow()
    batch = Batch(
        id=new_id(),
        source=source,
        status=BatchStatus.expanding if expanding else BatchStatus.accepted,
        callback_url=callback_url,
        callback_status=CallbackStatus.waiting.value if callback_url else None,
        review_threshold=_threshold(review_threshold),
        documents=[
            Document(id=new_id(), uri=uri, sha256=sha, status=DocumentStatus.queued)
            if reason is None
            else Document(
                id=new_id(),
                uri=uri,
                sha256=sha,
                status=DocumentStatus.failed,
                error=_clip(reason, ERROR_MAX),
                finished_at=now,
            )
            for (uri, sha), reason in zip(pairs, reasons, strict=True)
        ],
    )
    session.add(batch)
    if idempotency is not None:
        session.add(IdempotencyKey(batch_id=batch.id, **idempotency._asdict()))
    session.flush()
    return batch


def first_pages(session: Session, *, batch_id: str) -> list[Document]:
    """Each source file's first document (page 1, or a file not opened yet) in the batch, by URI."""
    documents = list(
        session.scalars(
            select(Document)
            .where(Document.batch_id == batch_id, or_(Document.page.is_(None), Document.page == 1))
            .order_by(Document.uri, Document.id)
        )
    )
    if not documents:
        raise BatchNotFound(batch_id)
    return documents


def find_idempotent(session: Session, *, key_sha256: str) -> IdempotencyKey | None:
    """The batch recorded under a request's ``Idempotency-Key`` digest, if a request already used it."""
    return session.get(IdempotencyKey, key_sha256)


def forget_idempotent(session: Session, *, batch_id: str) -> None:
    """Free the key a batch was made under (its upload never reached the store: a retry must try again)."""
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.batch_id == batch_id))


def add_documents(
    session: Session, *, batch_id: str, uris: Sequence[str], sha256s: Sequence[str | None] | None = None
) -> list[str]:
    """Add ``queued`` documents to a batch, skipping URIs it already holds; safe to call again.

    Returns the ids of the given URIs' documents that are still ``queued`` (new or not), in ``uris`` order:
    the ones to send to the queue, so that a retried listing re-sends rather than loses messages.
    """
    _batch_or_raise(session, batch_id)
    pairs = _pairs(uris, sha256s)
    if not pairs:
        return []
    now = utcnow()
    rows = [
        {
            "id": new_id(),
            "batch_id": batch_id,
            "uri": uri,
            "sha256": sha,
            "status": DocumentStatus.queued,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        for uri, sha in pairs
    ]
    stmt = _dialect_insert(session, Document).on_conflict_do_nothing(index_elements=["batch_id", "uri"])
    session.execute(stmt, rows)
    queued: dict[str, str] = {}
    for chunk in _chunks([uri for uri, _ in pairs]):
        found = session.execute(
            select(Document.uri, Document.id).where(
                Document.batch_id == batch_id,
                Document.uri.in_(chunk),
                Document.status == DocumentStatus.queued,
            )
        )
        queued.update({uri: doc_id for uri, doc_id in found})
    return [queued[uri] for uri, _ in pairs if uri in queued]


def set_batch_status(
    session: Session, *, batch_id: str, status: BatchStatus, error: str | None = None
) -> Batch:
    """Record the end of a batch's listing: ``accepted``, or ``failed`` with a reason."""
    batch = _batch_or_raise(session, batch_id)
    batch.status = BatchStatus(status)
    batch.error = _clip(error, ERROR_MAX)
    session.flush()
    return batch


def is_id(value: object) -> bool:
    """Whether ``value`` can be a row id at all (ids are UUID strings): no NUL byte, at most 36 characters.

    Strings that cannot be ids are answered "not found" without a query (PostgreSQL refuses NUL bytes).
    """
    return isinstance(value, str) and 0 < len(value) <= ID_MAX and "\x00" not in value


def get_batch(session: Session, *, batch_id: str) -> Batch | None:
    return session.get(Batch, batch_id) if is_id(batch_id) else None


def batch_state(status: BatchStatus | str, progress: dict[str, int]) -> str:
    """A batch's state as users see it: ``expanding`` (listing), ``accepted`` (documents waiting or being
    read), ``finished`` (every document done or failed), ``failed`` (the listing failed). The stored status
    only says whether the rows are all written; ``finished`` comes from the counts.

    >>> batch_state("accepted", {"queued": 0, "processing": 0, "done": 3, "failed": 1, "total": 4})
    'finished'
    """
    value = BatchStatus(status).value
    if value == BatchStatus.accepted.value and not progress.get("queued") and not progress.get("processing"):
        return "finished"
    return value


def batch_progress(session: Session, *, batch_id: str) -> dict[str, int]:
    """Documents per status and in total.

    ``{"queued": 1, "processing": 0, "done": 2, "failed": 1, "total": 4}``
    """
    _batch_or_raise(session, batch_id)
    return batches_progress(session, batch_ids=[batch_id])[batch_id]


def batches_progress(session: Session, *, batch_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """:func:`batch_progress` of several batches, in one query per chunk of ids (zeros for an empty one)."""
    progress = {batch_id: {status.value: 0 for status in DocumentStatus} for batch_id in batch_ids}
    for chunk in _chunks(list(progress)):
        rows = session.execute(
            select(Document.batch_id, Document.status, func.count())
            .where(Document.batch_id.in_(chunk))
            .group_by(Document.batch_id, Document.status)
        )
        for batch_id, status, count in rows:
            progress[batch_id][DocumentStatus(status).value] = count
    for counts in progress.values():
        counts["total"] = sum(counts.values())
    return progress


def list_batches(
    session: Session,
    *,
    limit: int,
    offset: int = 0,
    finished: bool | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> tuple[int, list[Batch]]:
    """How many batches match, and one page of them, newest first. ``finished``: only batches with nothing
    listed, queued or being read (True), or only those with work under way (False); the dates bound
    ``created_at`` (after: inclusive, before: exclusive)."""
    where: list[ColumnElement[bool]] = []
    if finished is not None:
        where.append(_finished() if finished else ~_finished())
    if created_after is not None:
        where.append(Batch.created_at >= created_after)
    if created_before is not None:
        where.append(Batch.created_at < created_before)
    total = session.scalar(select(func.count()).select_from(Batch).where(*where)) or 0
    page = session.scalars(
        select(Batch)
        .where(*where)
        .order_by(Batch.created_at.desc(), Batch.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return total, list(page)


def finished_batches(session: Session, *, created_before: datetime, limit: int | None = 1000) -> list[str]:
    """Ids of batches created before ``created_before`` with nothing queued or being read, oldest first."""
    return list(
        session.scalars(
            select(Batch.id)
            .where(Batch.created_at < created_before, _finished())
            .order_by(Batch.created_at, Batch.id)
            .limit(limit)
        )
    )


def _finished() -> ColumnElement[bool]:
    """SQL: the batch's listing is over and none of its documents is queued or being read."""
    pending = select(Document.id).where(
        Document.batch_id == Batch.id,
        Document.status.in_([DocumentStatus.queued, DocumentStatus.processing]),
    )
    return and_(Batch.status != BatchStatus.expanding, ~pending.exists())


def delete_batch(session: Session, *, batch_id: str) -> DeletedBatch:
    """Delete a finished batch: its row, its documents, their extractions and fields, its idempotency keys.

    Raises :class:`BatchNotFound`, or :class:`BatchBusy` while its listing or any of its documents is under
    way (so no worker's result is thrown away). The batch row is locked (``FOR UPDATE`` on PostgreSQL) until
    the transaction ends; a document queued again meanwhile (``retry-failed``) finds no row and is dropped
    by the worker. Nothing is deleted from the object store here: the caller deletes the ``sources`` it owns
    that no other batch reads (:func:`still_read`) before it commits.
    """
    batch = (
        session.scalars(select(Batch).where(Batch.id == batch_id).with_for_update()).one_or_none()
        if is_id(batch_id)
        else None
    )
    if batch is None:
        raise BatchNotFound(batch_id)
    if batch.status == BatchStatus.expanding:
        raise BatchBusy(batch_id, pending=-1)
    progress = batches_progress(session, batch_ids=[batch_id])[batch_id]
    pending = progress[DocumentStatus.queued.value] + progress[DocumentStatus.processing.value]
    if pending:
        raise BatchBusy(batch_id, pending=pending)
    rows = session.execute(select(Document.uri, Document.page).where(Document.batch_id == batch_id))
    sources = sorted({source_uri(uri, page=page) for uri, page in rows})
    session.execute(delete(Batch).where(Batch.id == batch_id))  # the rest goes by ON DELETE CASCADE
    session.flush()
    session.expunge(batch)
    return DeletedBatch(batch_id, progress["total"], sources)


def still_read(session: Session, *, uris: Sequence[str]) -> set[str]:
    """Those of ``uris`` that a document (of any batch) reads: as its own URI, or as page 1 of its source."""
    found: set[str] = set()
    for chunk in _chunks(list(uris)):
        found.update(session.scalars(select(Document.uri).where(Document.uri.in_(chunk)).distinct()))
    return found


def batch_documents(session: Session, *, batch_id: str) -> list[Document]:
    """The batch's documents alone (no extraction read), in the order of :func:`results_for_batch`."""
    _batch_or_raise(session, batch_id)
    order = (_source_uri_sql(), Document.page, Document.id)
    return list(session.scalars(select(Document).where(Document.batch_id == batch_id).order_by(*order)))


def results_for_batch(
    session: Session, *, batch_id: str, limit: int | None = None, offset: int = 0
) -> list[ResultRow]:
    """One :class:`ResultRow` per document of the batch, ordered by source URI then page; three queries.

    ``limit`` and ``offset`` pick one page of that order in SQL: only that page's documents, extractions
    and fields are read, so paging through a large batch costs each page its own size.
    """
    _batch_or_raise(session, batch_id)
    order = (_source_uri_sql(), Document.page, Document.id)
    page = select(Document.id).where(Document.batch_id == batch_id).order_by(*order)
    if offset:
        page = page.offset(offset)
    if limit is not None:
        page = page.limit(limit)
    documents = session.scalars(select(Document).where(Document.id.in_(page)).order_by(*order))
    in_batch = latest_extraction_ids(Extraction.document_id.in_(page))
    latest: dict[str, Any] = {}  # document id -> its latest extraction row (id, model_id, confidence, note)
    extractions = session.execute(
        select(
            Extraction.document_id,
            Extraction.id,
            Extraction.model_id,
            Extraction.confidence,
            Extraction.note,
            Extraction.data,
            Extraction.reviewer,
        ).where(Extraction.id.in_(in_batch))
    )
    for row in extractions:
        latest[row.document_id] = row
    fields: dict[int, FieldValues] = {}
    confidences: dict[int, FieldConfidences] = {}
    box_rows: dict[int, list[tuple[str, Any]]] = {}
    field_rows = session.execute(
        select(Field.extraction_id, Field.name, Field.value, Field.confidence, Field.box)
        .where(Field.extraction_id.in_(in_batch))
        .order_by(Field.id)
    )
    for extraction_id, name, value, confidence, box in field_rows:
        put_field(fields.setdefault(extraction_id, {}), name, value)
        put_field(confidences.setdefault(extraction_id, {}), name, confidence)
        box_rows.setdefault(extraction_id, []).append((name, box))
    rows: list[ResultRow] = []
    for document in documents:
        found = latest.get(document.id)
        rows.append(
            ResultRow(
                document_id=document.id,
                uri=document.uri,
                page=document.page,
                page_count=document.page_count,
                status=DocumentStatus(document.status).value,
                error=document.error,
                attempts=document.attempts,
                model_id=found.model_id if found else None,
                confidence=found.confidence if found else None,
                note=found.note if found else None,
                fields=fields.get(found.id, {}) if found else {},
                field_confidence=confidences.get(found.id, {}) if found else {},
                field_boxes=grouped(box_rows.get(found.id, [])) if found else {},
                reviewed_by=found.reviewer if found else None,
                data=found.data if found else None,
            )
        )
    return rows


# ---------------------------------------------------------------------------------------- extractions


def latest_extraction_ids(*where: ColumnElement[bool]) -> Select[tuple[int]]:
    """The one definition of "a document's latest extraction": the id of each document's newest extraction
    (by write time, then id) among the extractions matching ``where``, as a subquery for ``IN (...)``.

    A document read by two models has two extractions; its results and its API view show the newer one.
    """
    ranked = (
        select(
            Extraction.id,
            func.row_number()
            .over(
                partition_by=Extraction.document_id,
                order_by=(Extraction.created_at.desc(), Extraction.id.desc()),
            )
            .label("newest_first"),
        )
        .where(*where)
        .subquery()
    )
    return select(ranked.c.id).where(ranked.c.newest_first == 1)


def latest_extractions(session: Session, *, document_ids: Sequence[str]) -> dict[str, Extraction]:
    """Each document's latest extraction (:func:`latest_extraction_ids`), with its fields and model loaded.

    Documents without an extraction are absent from the result.
    """
    latest: dict[str, Extraction] = {}
    for chunk in _chunks(list(document_ids)):
        extractions = session.scalars(
            select(Extraction)
            .where(Extraction.id.in_(latest_extraction_ids(Extraction.document_id.in_(chunk))))
            .options(selectinload(Extraction.fields), joinedload(Extraction.model))
        )
        latest.update((extraction.document_id, extraction) for extraction in extractions)
    return latest


def field_values(extraction: Extraction) -> FieldValues:
    """An extraction's fields as ``{key path: value}``, a repeated key path as a list (:func:`put_field`)."""
    values: FieldValues = {}
    for field in extraction.fields:
        put_field(values, field.name, field.value)
    return values


def field_confidences(extraction: Extraction) -> FieldConfidences:
    """The confidence of each of :func:`field_values`' values, in the same shape."""
    confidences: FieldConfidences = {}
    for field in extraction.fields:
        put_field(confidences, field.name, field.confidence)
    return confidences


def field_boxes(extraction: Extraction) -> FieldBoxes:
    """Where each of :func:`field_values`' values was read (``[x0, y0, x1, y1]``, fractions of the page;
    None: not located), in the same shape."""
    return grouped([(field.name, field.box) for field in extraction.fields])


def grouped(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """``(key path, value)`` rows as ``{path: value}``, a repeated path as the list of its values; unlike
    :func:`put_field`, values may be lists themselves (boxes).

    >>> grouped([("a", [1, 2]), ("b", [3, 4]), ("b", None)])
    {'a': [1, 2], 'b': [[3, 4], None]}
    """
    lists: dict[str, list[Any]] = {}
    for name, value in pairs:
        lists.setdefault(name, []).append(value)
    return {name: values[0] if len(values) == 1 else values for name, values in lists.items()}


# ---------------------------------------------------------------------------------------------- reviews


def reviews(session: Session, *, limit: int = 50, offset: int = 0) -> tuple[list[Document], int]:
    """Documents that wait for review (``needs_review``), oldest read first, and how many wait in all."""
    waiting = Document.status == DocumentStatus.needs_review
    total = session.scalar(select(func.count()).select_from(Document).where(waiting)) or 0
    documents = session.scalars(
        select(Document)
        .where(waiting)
        .order_by(Document.finished_at, Document.id)
        .offset(offset)
        .limit(limit)
    ).all()
    return list(documents), int(total)


def save_review(
    session: Session, *, document_id: str, reviewer: str, values: Sequence[tuple[str, str]]
) -> Extraction:
    """A reviewer's version of a document's latest reading, as a new extraction; the document ends ``done``.

    ``values`` are the reading's fields as ``(key path, value)``, each as the reviewer left it: every field
    of the reading, the values edited or not. They pair with the reading's fields by key path and, for a
    repeated path (list items), by their order among that path's values. The new extraction (``source``
    reviewer, no model) carries them with confidence 1 and the boxes of the fields they correct; its
    ``data`` is the reading's with the values replaced. The model's extraction is kept as it was.
    :class:`InvalidInput` when the paths are not the reading's, or the document has no reading.
    """
    document = _lock_document(session, document_id)
    latest = latest_extractions(session, document_ids=[document_id]).get(document_id)
    if latest is None:
        raise InvalidInput("this document has no reading to review yet")
    sent: dict[str, list[str]] = {}
    for name, value in values:
        sent.setdefault(name, []).append(value)
    stored: dict[str, int] = {}
    for field in latest.fields:
        stored[field.name] = stored.get(field.name, 0) + 1
    if {name: len(v) for name, v in sent.items()} != stored:
        raise InvalidInput(
            "the fields sent are not the reading's: send every field of the document's latest reading "
            f"({len(latest.fields)} fields), with its key path"
        )
    ordered = [(field.name, sent[field.name].pop(0), field.box) for field in latest.fields]
    rows = [_field_row(name, value, 1.0, box) for name, value, box in ordered]
    now = utcnow()
    extraction = Extraction(
        document_id=document_id,
        model_id=None,
        source=ExtractionSource.reviewer.value,
        reviewer=_clip(reviewer, 255) or "reviewer",
        raw_sequence="",
        data=replace_leaves(latest.data, _by_path([(name, value) for name, value, _ in ordered])),
        confidence=1.0,
        latency_ms=None,
        note=None,
        created_at=now,
    )
    session.add(extraction)
    session.flush()
    session.execute(insert(Field), [{"extraction_id": extraction.id, **row} for row in rows])
    document.status = DocumentStatus.done
    document.error = None
    session.flush()
    return session.scalars(
        select(Extraction)
        .where(Extraction.id == extraction.id)
        .options(selectinload(Extraction.fields))
        .execution_options(populate_existing=True)
    ).one()


def _by_path(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in pairs:
        out.setdefault(name, []).append(value)
    return out


def reviewed(session: Session, *, batch_id: str | None = None) -> list[tuple[Document, Extraction]]:
    """Documents whose latest extraction is a reviewer's, with it (oldest review first): what a person
    checked, as training data. ``batch_id``: one batch's only."""
    latest = latest_extraction_ids()
    query = (
        select(Document, Extraction)
        .join(Extraction, Extraction.document_id == Document.id)
        .where(Extraction.id.in_(latest), Extraction.source == ExtractionSource.reviewer.value)
        .order_by(Extraction.created_at, Extraction.id)
    )
    if batch_id is not None:
        query = query.where(Document.batch_id == batch_id)
    return [(document, extraction) for document, extraction in session.execute(query).all()]


def replace_leaves(data: Any, values: dict[str, list[str]]) -> Any:
    """``data`` with each leaf replaced by the next of ``values[its key path]`` (paths as
    :func:`donut_hole.model.readings.flatten_parse` writes them; list items in order); a leaf whose path has
    no value left keeps its own. Key order does not matter (PostgreSQL's JSONB reorders keys).

    >>> replace_leaves({"a": "x", "items": [{"b": "y"}, {"b": "z"}]}, {"a": ["1"], "items.b": ["2", "3"]})
    {'a': '1', 'items': [{'b': '2'}, {'b': '3'}]}
    """
    queues = {path: list(v) for path, v in values.items()}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, dict):
            return {key: walk(value, f"{path}.{key}" if path else key) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item, path) for item in node]
        if node is None or not path:
            return node
        queue = queues.get(path)
        return queue.pop(0) if queue else node

    return walk(data, "")


# -------------------------------------------------------------------------------------------- documents


def get_document(session: Session, *, document_id: str) -> Document | None:
    return session.get(Document, document_id) if is_id(document_id) else None


def add_pages(session: Session, *, document_id: str, page_count: int, source_sha256: str) -> list[str]:
    """Record what a worker found in a document's source, and add a ``queued`` row per further page.

    The document (page 1 of its source) gets ``page_count`` and ``source_sha256``; pages 2 to
    ``page_count`` become documents of the same batch with the URI ``<uri>#page=<k>`` (:func:`page_uri`),
    the same ``page_count`` and ``source_sha256``, and no ``sent_at`` (a watchdog sends them if the caller
    cannot). Safe to call again (a redelivered message): existing pages are not added twice. Returns the
    ids of the further pages that are still ``queued``, in page order, for the caller to send.
    """
    document = set_source(
        session, document_id=document_id, page_count=page_count, source_sha256=source_sha256
    )
    if document.page != 1:
        raise InvalidInput(f"document {document_id!r} is page {document.page}, not the first of its source")
    if page_count < 2:
        return []
    now = utcnow()
    uris = {page_uri(document.uri, page=page): page for page in range(2, page_count + 1)}
    rows = [
        {
            "id": new_id(),
            "batch_id": document.batch_id,
            "uri": uri,
            "status": DocumentStatus.queued,
            "attempts": 0,
            "page": page,
            "page_count": page_count,
            "source_sha256": source_sha256,
            "created_at": now,
            "updated_at": now,
        }
        for uri, page in uris.items()
    ]
    for chunk in range(0, len(rows), _CHUNK):
        stmt = _dialect_insert(session, Document).on_conflict_do_nothing(index_elements=["batch_id", "uri"])
        session.execute(stmt, rows[chunk : chunk + _CHUNK])
    queued: dict[int, str] = {}
    for chunk_uris in _chunks(list(uris)):
        found = session.execute(
            select(Document.uri, Document.page, Document.id).where(
                Document.batch_id == document.batch_id,
                Document.uri.in_(chunk_uris),
                Document.status == DocumentStatus.queued,
            )
        )
        # an object that happens to be named "<uri>#page=<k>" in the same batch is not one of the pages
        queued.update({page: doc_id for uri, page, doc_id in found if uris[uri] == page})
    return [queued[page] for page in sorted(queued)]


def set_source(session: Session, *, document_id: str, page_count: int, source_sha256: str) -> Document:
    """Record the page count and sha256 of the source file a worker read for this document."""
    document = _lock_document(session, document_id)
    document.page_count = page_count
    document.source_sha256 = source_sha256
    session.flush()
    return document


def pages_of(session: Session, *, document: Document) -> list[Document]:
    """Every page of ``document``'s source in its batch (itself included), in page order."""
    if not document.page_count or document.page_count < 2:
        return [document]
    source = document.source_uri
    uris = [page_uri(source, page=page) for page in range(1, document.page_count + 1)]
    pages: list[Document] = []
    for chunk in _chunks(uris):
        pages.extend(
            session.scalars(
                select(Document).where(Document.batch_id == document.batch_id, Document.uri.in_(chunk))
            )
        )
    return sorted((p for p in pages if page_uri(source, page=p.page) == p.uri), key=lambda p: p.page)


def _source_uri_sql() -> ColumnElement[str]:
    """:func:`~donut_hole.db.models.source_uri` in SQL (PostgreSQL and SQLite), to sort pages together."""
    suffix = func.length("#page=") + func.length(cast(Document.page, String))
    return case(
        (Document.page == 1, Document.uri),
        else_=func.substr(Document.uri, 1, func.length(Document.uri) - suffix),
    )


def mark_processing(session: Session, *, document_id: str, count: bool = True) -> Document:
    """Start an attempt: status ``processing``, ``attempts`` + 1, ``started_at`` now, old error cleared.

    It does not look at the current status; a task that must not redo finished work checks it first.
    ``count=False`` goes on with an attempt already counted (a retry after a database error).
    """
    document = _lock_document(session, document_id)
    document.status = DocumentStatus.processing
    if count:
        document.attempts = Document.attempts + 1  # in SQL, so that concurrent attempts all count
    document.started_at = utcnow()
    document.finished_at = None
    document.error = None
    session.flush()
    session.refresh(document, ["attempts"])
    return document


def mark_retrying(session: Session, *, document_id: str, reason: str) -> Document:
    """The attempt hit a passing failure: back to ``queued`` until the retry, with the reason in ``error``.

    The attempt ended cleanly, so it is given back (``attempts`` - 1): ``attempts`` counts the attempts
    that ended without an outcome (a worker that died), and an outage of any length retried within the
    budget never makes a document give up. ``sent_at`` is now: the retry's message goes out next.
    """
    document = _lock_document(session, document_id)
    document.status = DocumentStatus.queued
    document.error = _clip(f"retrying after attempt {document.attempts}: {reason}", ERROR_MAX)
    document.attempts = max(0, document.attempts - 1)
    document.sent_at = utcnow()
    session.flush()
    return document


def mark_sent(session: Session, *, document_ids: Sequence[str]) -> int:
    """``sent_at`` = now for documents whose message the broker took; returns how many rows changed.

    The rows are locked first in id order (``SELECT ... ORDER BY id FOR UPDATE``), the order a worker's
    claim locks them in: an ``UPDATE ... WHERE id IN (...)`` locks them in the order it finds them, and
    against a worker claiming some of the same documents that was a deadlock on PostgreSQL.
    """
    changed = 0
    now = utcnow()
    for chunk in _chunks(sorted(set(document_ids))):
        session.execute(
            select(Document.id).where(Document.id.in_(chunk)).order_by(Document.id).with_for_update()
        )
        result = session.execute(
            update(Document)
            .where(Document.id.in_(chunk))
            .values(sent_at=now)
            .execution_options(synchronize_session=False)
        )
        changed += int(getattr(result, "rowcount", 0) or 0)
    return changed


def requeue_stalled(
    session: Session,
    *,
    started_before: datetime,
    waiting_before: datetime | None = None,
    unsent_before: datetime | None = None,
    reason: str,
) -> list[tuple[str, str]]:
    """Documents no worker is reading any more, to be sent again: returns ``(document_id, batch_id)`` pairs.

    They are the ``processing`` ones whose attempt started before ``started_before``; with
    ``waiting_before``, the ``queued`` ones whose last message went out before then (``sent_at``: waiting
    for a retry whose worker vanished, or a message whose sender gave up during an outage), or, for rows
    older than ``sent_at``, untouched since then after an attempt; with ``unsent_before``, the ``queued``
    ones never sent (``sent_at`` null: the broker was down when they were stored) and older than that.
    They become ``queued`` with ``reason`` in ``error`` and ``sent_at`` now (the caller sends them before
    it commits). One conditional ``UPDATE`` does it, so when several workers look at the same time each
    document is taken by one of them only. ``attempts`` is kept: the next claim counts the new attempt
    and gives up after ``max_retries + 1`` of them.
    """
    stalled = and_(Document.status == DocumentStatus.processing, Document.started_at < started_before)
    queued = Document.status == DocumentStatus.queued
    if waiting_before is not None:
        sent_long_ago = and_(queued, Document.sent_at.is_not(None), Document.sent_at < waiting_before)
        tried_long_ago = and_(
            queued, Document.sent_at.is_(None), Document.attempts > 0, Document.updated_at < waiting_before
        )
        stalled = or_(stalled, sent_long_ago, tried_long_ago)
    if unsent_before is not None:
        never_sent = and_(
            queued, Document.sent_at.is_(None), Document.attempts == 0, Document.updated_at < unsent_before
        )
        stalled = or_(stalled, never_sent)
    now = utcnow()
    rows = session.execute(
        update(Document)
        .where(stalled)
        .values(status=DocumentStatus.queued, error=_clip(reason, ERROR_MAX), updated_at=now, sent_at=now)
        .returning(Document.id, Document.batch_id)
        .execution_options(synchronize_session=False)
    ).all()
    return [(document_id, batch_id) for document_id, batch_id in rows]


TRANSIENT = "transient: "
"""How ``documents.error`` begins when a document failed for a passing reason (an outage past the retry
budget): :func:`requeue_transient_failures` (``donut-hole enqueue --retry-failed``) queues it again."""
NOT_UPLOADED = "not uploaded: "
"""The reason of a document whose file the submitter could not put in the store: nothing to read, so
:func:`requeue_transient_failures` leaves it (its file must be enqueued again)."""


def requeue_transient_failures(session: Session, *, batch_id: str) -> list[str]:
    """The batch's documents ``failed`` for a transient reason back to ``queued`` (``sent_at`` now,
    ``attempts`` 0, the old reason kept after ``queued again:``); returns their ids, for the caller to send
    before it commits. :class:`BatchNotFound` when there is no such batch."""
    _batch_or_raise(session, batch_id)
    now = utcnow()
    rows = session.execute(
        update(Document)
        .where(
            Document.batch_id == batch_id,
            Document.status == DocumentStatus.failed,
            Document.error.startswith(TRANSIENT, autoescape=True),
        )
        .values(
            status=DocumentStatus.queued,
            error=func.substr("queued again after: " + Document.error, 1, ERROR_MAX),
            attempts=0,
            finished_at=None,
            updated_at=now,
            sent_at=now,
        )
        .returning(Document.id)
        .execution_options(synchronize_session=False)
    ).all()
    return sorted(document_id for (document_id,) in rows)


def mark_failed(session: Session, *, document_id: str, error: str) -> Document:
    """End the document as ``failed`` with a reason a user can read (clipped to ``ERROR_MAX`` characters)."""
    document = _lock_document(session, document_id)
    document.status = DocumentStatus.failed
    document.error = _clip(error, ERROR_MAX) or "unknown error"
    document.finished_at = utcnow()
    session.flush()
    return document


def save_extraction(
    session: Session,
    *,
    document_id: str,
    model_id: int,
    raw_sequence: str,
    data: dict[str, Any],
    confidence: float | None,
    latency_ms: float | None,
    fields: Iterable[tuple[str, str, float | None] | tuple[str, str, float | None, list[float] | None]],
    note: str | None = None,
    review_threshold: float | None = None,
    doubtful: bool = False,
) -> Extraction:
    """Store one model's reading of a document and mark the document ``done`` (or ``needs_review``);
    idempotent.

    Keyed by ``(document_id, model_id)``: a second call for the same key overwrites the extraction row and
    replaces its fields instead of adding rows (``INSERT ... ON CONFLICT DO UPDATE`` on PostgreSQL and
    SQLite; the unique constraint is the guard even between concurrent writers). ``fields`` are
    ``(key path, value, confidence)``; values longer than ``FIELD_VALUE_MAX`` characters are clipped in the
    search table (``data`` keeps them whole). ``note`` says what is off in a reading that is stored all
    the same (a schema mismatch); ``documents.error`` is cleared. ``fields`` may carry a fourth item, the
    field's box (``[x0, y0, x1, y1]``, fractions of the page).

    The document ends ``needs_review`` when a threshold applies (its batch's ``review_threshold``, else
    ``review_threshold``) and the reading has no field, a field whose confidence is below it, or is
    ``doubtful`` (cut at the token limit, or not a valid document of its kind) (:func:`needs_review`);
    else ``done``.
    """
    field_rows = [_field_row(*row) for row in fields]
    document = _lock_document(session, document_id)  # lock order everywhere: document, then its extraction
    batch_threshold = session.scalar(select(Batch.review_threshold).where(Batch.id == document.batch_id))
    threshold = batch_threshold if batch_threshold is not None else review_threshold
    now = utcnow()
    values = {
        "raw_sequence": raw_sequence,
        "data": data,
        "confidence": confidence,
        "latency_ms": latency_ms,
        "note": _clip(note, ERROR_MAX),
        "created_at": now,
    }
    stmt = _dialect_insert(session, Extraction).values(document_id=document_id, model_id=model_id, **values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["document_id", "model_id"], set_={key: stmt.excluded[key] for key in values}
    ).returning(Extraction.id)
    extraction_id = session.execute(stmt).scalar_one()
    session.execute(delete(Field).where(Field.extraction_id == extraction_id))
    if field_rows:
        session.execute(insert(Field), [{"extraction_id": extraction_id, **row} for row in field_rows])
    confidences = [row["confidence"] for row in field_rows]
    document.status = (
        DocumentStatus.needs_review
        if needs_review(confidences, threshold, doubtful=doubtful)
        else DocumentStatus.done
    )
    document.error = None
    document.finished_at = now
    session.flush()
    return session.scalars(
        select(Extraction)
        .where(Extraction.id == extraction_id)
        .options(selectinload(Extraction.fields))
        .execution_options(populate_existing=True)
    ).one()


SearchMatch = Literal["exact", "prefix"]


def search_fields(
    session: Session,
    *,
    name: str,
    value: str,
    limit: int = 100,
    offset: int = 0,
    match: SearchMatch = "exact",
    case_sensitive: bool = True,
) -> list[Document]:
    """Documents with a field ``name`` (a key path such as ``"consignee.name"``) that matches ``value``.

    ``match="exact"``: the value equals ``value`` (the indexed ``(name, value)`` pair); ``"prefix"``: it
    starts with ``value`` (no wildcards: ``%`` and ``_`` are plain characters). ``case_sensitive=False``
    compares both in lower case. Values are compared as stored (clipped to ``FIELD_VALUE_MAX``
    characters). Oldest documents first: ``limit`` of them after skipping ``offset``.
    """
    if not 1 <= limit <= 10_000:
        raise InvalidInput(f"limit must be between 1 and 10000, got {limit}")
    if offset < 0:
        raise InvalidInput(f"offset must be at least 0, got {offset}")
    if "\x00" in name or "\x00" in value:
        return []  # no stored field holds a NUL byte (PostgreSQL text cannot)
    wanted = value[:FIELD_VALUE_MAX]
    stored: Any = Field.value if case_sensitive else func.lower(Field.value)
    if not case_sensitive:
        wanted = wanted.lower()
    if match == "prefix":  # substr, not LIKE: no wildcards to escape, and case-sensitive in SQLite too
        stored = func.substr(stored, 1, len(wanted))
    condition = stored == wanted
    matching = select(Extraction.document_id).join(Field).where(Field.name == name, condition)
    return list(
        session.scalars(
            select(Document)
            .where(Document.id.in_(matching))
            .order_by(Document.created_at, Document.id)
            .offset(offset)
            .limit(limit)
        )
    )


# ----------------------------------------------------------------------------------------------- models


def get_or_create_model(
    session: Session,
    *,
    name: str,
    path: str,
    sha256: str,
    density: float | None = None,
    metrics: dict[str, Any] | None = None,
) -> Model:
    """The ``models`` row for this checkpoint (``name`` + ``sha256``), created if absent.

    Safe when several workers start at once: the insert does nothing on conflict, then the row is read.
    An existing row is returned as it is (``path``, ``density`` and ``metrics`` are not overwritten).
    """
    stmt = (
        _dialect_insert(session, Model)
        .values(name=name, path=path, sha256=sha256, density=density, metrics=metrics, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["name", "sha256"])
    )
    session.execute(stmt)
    return session.scalars(select(Model).where(Model.name == name, Model.sha256 == sha256)).one()


# ---------------------------------------------------------------------------------------------- helpers


def _dialect_insert(session: Session, entity: type[Any]) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(entity)
    if dialect == "sqlite":
        return sqlite.insert(entity)
    raise RepositoryError(f"unsupported database dialect {dialect!r}")


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
