"""The tables of the online pipeline, as SQLAlchemy 2.0 typed declarative models.

Schema (PostgreSQL in production, SQLite for the embedded default)::

    models       (id, name, path, sha256, density, metrics, created_at)      UNIQUE(name, sha256)
    batches      (id, source, status, error, created_at, callback_url, callback_status,
                  callback_attempts, callback_next_at, callback_delivered_at, callback_error,
                  review_threshold)
    documents    (id, batch_id → batches, uri, sha256, status, error, attempts,
                  created_at, updated_at, started_at, finished_at, sent_at,
                  page, page_count, source_sha256)                          UNIQUE(batch_id, uri)
    extractions  (id, document_id → documents, model_id → models (null: a reviewer's), source, reviewer,
                  raw_sequence, data, confidence, latency_ms, note, created_at)
                                                                             UNIQUE(document_id, model_id)
    fields       (id, extraction_id → extractions, name, value, confidence, box)  INDEX(name, value)

A document is one *page*: a single image is page 1 of 1; a PDF or multi-frame TIFF has one row per page,
all with the source's ``page_count`` and ``source_sha256``. Page 1 keeps the URI it was submitted with;
page *k* > 1 is ``<uri>#page=<k>`` (the PDF fragment of RFC 8118), so ``(batch_id, uri)`` stays the one
uniqueness rule (:func:`page_uri`, :func:`source_uri`).

Batch and document ids are UUID strings so that they can be handed to users; the others are integers.
Timestamps are timezone-aware UTC on both backends. Deleting a batch deletes its documents, their
extractions and fields; a model that still has extractions cannot be deleted.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSONB on PostgreSQL (indexable, compact), the JSON1 text type on SQLite.
JSONType = JSON().with_variant(JSONB(), "postgresql")
# 64-bit ids where rows are many; SQLite only auto-increments an INTEGER PRIMARY KEY.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")

FIELD_NAME_MAX = 255
FIELD_VALUE_MAX = 512  # keeps (name, value) under PostgreSQL's B-tree row limit; full values live in data


def page_uri(uri: str, *, page: int) -> str:
    """The URI of page ``page`` of the source at ``uri``: ``"s3://b/bol.pdf"``, 2 → ``"s3://b/bol.pdf#page=2"``.

    Page 1 is the source's own URI (the row it was submitted as).
    """
    return uri if page == 1 else f"{uri}#page={page}"


def source_uri(uri: str, *, page: int) -> str:
    """The inverse of :func:`page_uri`: ``"s3://b/bol.pdf#page=2"``, 2 → ``"s3://b/bol.pdf"``."""
    return uri.removesuffix(f"#page={page}") if page != 1 else uri


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """``TIMESTAMP WITH TIME ZONE``; values are stored as UTC and always read back timezone-aware.

    SQLite keeps no zone, so naive values read from it are UTC by construction.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: give a timezone-aware value")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class DocumentStatus(enum.StrEnum):
    queued = "queued"
    processing = "processing"
    done = "done"
    failed = "failed"
    needs_review = "needs_review"  # read, with a field below the review threshold: waits for a person


class ExtractionSource(enum.StrEnum):
    """Who wrote an extraction: a model's reading, or a person's reviewed version of it."""

    model = "model"
    reviewer = "reviewer"


class CallbackStatus(enum.StrEnum):
    """Where a batch's completion callback stands (``None``: the batch has no callback)."""

    waiting = "waiting"  # the batch still has queued or processing documents
    due = "due"  # finished: a delivery is on its way or waits for its next try (callback_next_at)
    delivered = "delivered"  # the receiver answered 2xx: never sent again
    failed = "failed"  # callback_max_attempts tries failed; callback_error says the last reason


class BatchStatus(enum.StrEnum):
    """Whether a batch's document rows are all written; per-document progress is counted, not stored."""

    expanding = "expanding"  # documents are still being listed (an S3 prefix expanded by a task)
    accepted = "accepted"  # every document row exists
    failed = "failed"  # listing failed; ``error`` says why


def _str_enum(cls: type[enum.StrEnum], name: str) -> Enum:
    # VARCHAR + CHECK on both backends (no native PostgreSQL ENUM: adding a value needs no type migration).
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSONType, datetime: UTCDateTime}


class Model(Base):
    """A model checkpoint that produced extractions; identified by name and content hash."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    density: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = (
        Index("ix_batches_callback_status", "callback_status"),
        Index("ix_batches_created_at", "created_at"),  # GET /v1/batches: newest first
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    source: Mapped[str] = mapped_column(Text)
    status: Mapped[BatchStatus] = mapped_column(_str_enum(BatchStatus, "batch_status"))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())
    # The completion webhook (see donut_hole/worker/webhook.py); status values: CallbackStatus
    callback_url: Mapped[str | None] = mapped_column(Text)
    callback_status: Mapped[str | None] = mapped_column(String(16))
    callback_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    callback_next_at: Mapped[datetime | None]  # next try (or the lease of the try under way)
    callback_delivered_at: Mapped[datetime | None]
    callback_error: Mapped[str | None] = mapped_column(Text)  # the last failed try, without the URL
    # a document with a field below this confidence waits for review (None: the service's setting)
    review_threshold: Mapped[float | None] = mapped_column(Float)

    documents: Mapped[list[Document]] = relationship(
        back_populates="batch", cascade="all, delete-orphan", passive_deletes=True, order_by="Document.uri"
    )


class IdempotencyKey(Base):
    """A client's ``Idempotency-Key`` and the batch its first request made: the same request sent again (a
    retry after a lost answer) gets that batch back, not a second one (``donut_hole.api.idempotency``).

    Written in the batch's own transaction, so of two requests racing with one key only one batch commits.
    """

    __tablename__ = "idempotency_keys"

    key_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)  # of the client's API key + the key
    request_sha256: Mapped[str] = mapped_column(String(64))  # of what the request asked for
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("batch_id", "uri"),  # one document per scan per batch: re-listing adds nothing
        Index("ix_documents_batch_id_status", "batch_id", "status"),
        Index("ix_documents_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[DocumentStatus] = mapped_column(
        _str_enum(DocumentStatus, "document_status"),
        default=DocumentStatus.queued,
        server_default=DocumentStatus.queued.value,
    )
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow, server_default=func.now())
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]  # a message carrying it last went to the broker (None: never)
    page: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # 1-based, in its source
    page_count: Mapped[int | None] = mapped_column(Integer)  # pages of its source; None: not opened yet
    source_sha256: Mapped[str | None] = mapped_column(String(64))  # of the source file a worker read

    @property
    def source_uri(self) -> str:
        """Where the source file of this page is (the URI without ``#page=<k>``)."""
        return source_uri(self.uri, page=self.page)

    batch: Mapped[Batch] = relationship(back_populates="documents")
    extractions: Mapped[list[Extraction]] = relationship(
        back_populates="document", cascade="all, delete-orphan", passive_deletes=True
    )


class Extraction(Base):
    """One model's reading of one document, or a reviewer's version of it.

    A model's reading is keyed by (document_id, model_id), its idempotency key; a reviewer's has no model
    (``model_id`` null, ``source`` ``reviewer``, ``reviewer`` who) and is a new row at every review, so the
    model's reading is never overwritten. A document's newest extraction is the one served.
    """

    __tablename__ = "extractions"
    __table_args__ = (UniqueConstraint("document_id", "model_id"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"), index=True)
    source: Mapped[str] = mapped_column(String(16), default="model", server_default="model")
    reviewer: Mapped[str | None] = mapped_column(String(255))
    raw_sequence: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]]
    confidence: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    # what is off in a reading that was stored all the same, e.g. "schema: shipping_label lacks ..."
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())  # last write

    document: Mapped[Document] = relationship(back_populates="extractions")
    model: Mapped[Model | None] = relationship()
    fields: Mapped[list[Field]] = relationship(
        back_populates="extraction", cascade="all, delete-orphan", passive_deletes=True, order_by="Field.id"
    )


class Field(Base):
    """One flattened key path of an extraction (``"consignee.name"``) and its value, for search."""

    __tablename__ = "fields"
    __table_args__ = (Index("ix_fields_name_value", "name", "value"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    extraction_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("extractions.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(FIELD_NAME_MAX))
    value: Mapped[str] = mapped_column(Text)
    confidence: Mapped[float | None] = mapped_column(Float)
    box: Mapped[list[float] | None] = mapped_column(JSONType)  # [x0, y0, x1, y1], fractions of the page

    extraction: Mapped[Extraction] = relationship(back_populates="fields")


metadata = Base.metadata
