"""Documents as the API shows them: each with the fields of its latest extraction.

The reads are :mod:`donut_hole.db.repository`'s (``latest_extractions`` is the one definition of a
document's latest extraction); this module only turns them into :mod:`~donut_hole.api.schemas`.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from donut_hole.api.schemas import DocumentPublic, ModelRef, PageRef
from donut_hole.db import Document, DocumentStatus, repository


def documents_public(session: Session, *, documents: Sequence[Document]) -> list[DocumentPublic]:
    """:class:`DocumentPublic` for each document, in the given order."""
    latest = repository.latest_extractions(session, document_ids=[document.id for document in documents])
    public = []
    for document in documents:
        extraction = latest.get(document.id)
        public.append(
            DocumentPublic(
                id=document.id,
                batch_id=document.batch_id,
                uri=document.uri,
                page=document.page,
                page_count=document.page_count,
                source_sha256=document.source_sha256,
                pages=_pages(session, document),
                status=DocumentStatus(document.status),
                error=document.error,
                attempts=document.attempts,
                created_at=document.created_at,
                updated_at=document.updated_at,
                started_at=document.started_at,
                finished_at=document.finished_at,
                fields=repository.field_values(extraction) if extraction else {},
                data=extraction.data if extraction else None,
                confidence=extraction.confidence if extraction else None,
                field_confidence=repository.field_confidences(extraction) if extraction else {},
                note=extraction.note if extraction else None,
                model=ModelRef(id=extraction.model.id, name=extraction.model.name) if extraction else None,
            )
        )
    return public


def _pages(session: Session, document: Document) -> list[PageRef]:
    if not document.page_count or document.page_count < 2:
        return []
    return [
        PageRef(page=page.page, document_id=page.id, status=DocumentStatus(page.status))
        for page in repository.pages_of(session, document=document)
    ]
