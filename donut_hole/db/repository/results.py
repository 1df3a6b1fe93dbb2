"""What was read: extractions and their fields, reviews, search, models."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Select,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.orm import Session, joinedload, selectinload

from donut_hole.db.models import (
    FIELD_VALUE_MAX,
    Batch,
    Document,
    DocumentStatus,
    Extraction,
    ExtractionSource,
    Field,
    Model,
    utcnow,
)
from donut_hole.db.repository.common import (
    ERROR_MAX,
    FieldBoxes,
    FieldConfidences,
    FieldValues,
    InvalidInput,
    _chunks,
    _clip,
    _dialect_insert,
    _field_row,
    _lock_document,
    needs_review,
    put_field,
)

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
    sent = _by_path(values)
    if Counter({name: len(v) for name, v in sent.items()}) != Counter(f.name for f in latest.fields):
        raise InvalidInput(
            "the fields sent are not the reading's: send every field of the document's latest reading "
            f"({len(latest.fields)} fields), with its key path"
        )
    data = replace_leaves(latest.data, sent)  # before the pops below (it reads its own copy)
    ordered = [(field.name, sent[field.name].pop(0), field.box) for field in latest.fields]
    rows = [_field_row(name, value, 1.0, box) for name, value, box in ordered]
    now = utcnow()
    extraction = Extraction(
        document_id=document_id,
        model_id=None,
        source=ExtractionSource.reviewer.value,
        reviewer=_clip(reviewer, 255) or "reviewer",
        raw_sequence="",
        data=data,
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
