"""Reads the API needs beyond :mod:`donut_hole.db.repository`: documents with their latest extraction.

Like the repository, these are plain functions of a session that know nothing of HTTP; the routes turn
their results into :mod:`~donut_hole.api.schemas`.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload, selectinload

from donut_hole.api.schemas import DocumentPublic, FieldValues, ModelRef
from donut_hole.db import Document, DocumentStatus, Extraction, repository

_CHUNK = 500  # ids per IN (...) list


def latest_extractions(session: Session, *, document_ids: Sequence[str]) -> dict[str, Extraction]:
    """Each document's newest extraction (by write time), with its fields and model loaded; two queries.

    Documents without an extraction are absent from the result.
    """
    latest: dict[str, Extraction] = {}
    for start in range(0, len(document_ids), _CHUNK):
        extractions = session.scalars(
            select(Extraction)
            .where(Extraction.document_id.in_(document_ids[start : start + _CHUNK]))
            .options(selectinload(Extraction.fields), joinedload(Extraction.model))
            .order_by(Extraction.created_at, Extraction.id)
        )
        for extraction in extractions:
            latest[extraction.document_id] = extraction  # later rows win
    return latest


def field_values(extraction: Extraction) -> FieldValues:
    """``{"consignee.name": "ACME", "items.name": ["bolt", "nut"]}``: a repeated key path gives a list."""
    values: FieldValues = {}
    for field in extraction.fields:
        repository.put_field(values, field.name, field.value)
    return values


def documents_public(session: Session, *, documents: Sequence[Document]) -> list[DocumentPublic]:
    """:class:`DocumentPublic` for each document, in the given order."""
    latest = latest_extractions(session, document_ids=[document.id for document in documents])
    public = []
    for document in documents:
        extraction = latest.get(document.id)
        public.append(
            DocumentPublic(
                id=document.id,
                batch_id=document.batch_id,
                uri=document.uri,
                status=DocumentStatus(document.status),
                error=document.error,
                attempts=document.attempts,
                created_at=document.created_at,
                updated_at=document.updated_at,
                started_at=document.started_at,
                finished_at=document.finished_at,
                fields=field_values(extraction) if extraction else {},
                data=extraction.data if extraction else None,
                confidence=extraction.confidence if extraction else None,
                note=extraction.note if extraction else None,
                model=ModelRef(id=extraction.model.id, name=extraction.model.name) if extraction else None,
            )
        )
    return public
