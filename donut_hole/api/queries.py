"""Documents as the API shows them: each with the fields of its latest extraction.

The reads are :mod:`donut_hole.db.repository`'s (``latest_extractions`` is the one definition of a
document's latest extraction); this module only turns them into :mod:`~donut_hole.api.schemas`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.orm import Session

from donut_hole.api.schemas import DocumentPublic, ModelRef, PageRef
from donut_hole.db import Document, DocumentStatus, repository
from donut_hole.settings import Settings


def public_uri(uri: str, settings: Settings) -> str:
    """A document's URI as answers show it: an object of a local store by its key, relative to the store
    (``uploads/<id>/label.jpg``, not the server's path); S3 URIs as they are."""
    if "://" in settings.storage_url:
        return uri
    root = Path(settings.storage_url).expanduser().resolve().as_uri() + "/"
    return uri[len(root) :] if uri.startswith(root) else uri


def public_text(text: str | None, settings: Settings) -> str | None:
    """A stored reason as answers show it: the server's store and data paths (as paths or file URIs) as
    ``<store>``."""
    if not text:
        return text
    roots = {settings.data_dir.resolve(), settings.data_dir}
    if "://" not in settings.storage_url:
        roots.add(Path(settings.storage_url).expanduser().resolve())
    forms = {form for root in roots for form in (root.as_uri() if root.is_absolute() else "", str(root))}
    for form in sorted(forms, key=len, reverse=True):
        if form and form != ".":
            text = text.replace(form, "<store>")
    return text


def documents_public(
    session: Session, *, documents: Sequence[Document], settings: Settings
) -> list[DocumentPublic]:
    """:class:`DocumentPublic` for each document, in the given order (URIs and reasons as
    :func:`public_uri` and :func:`public_text` show them)."""
    latest = repository.latest_extractions(session, document_ids=[document.id for document in documents])
    public = []
    for document in documents:
        extraction = latest.get(document.id)
        public.append(
            DocumentPublic(
                id=document.id,
                batch_id=document.batch_id,
                uri=public_uri(document.uri, settings),
                page=document.page,
                page_count=document.page_count,
                source_sha256=document.source_sha256,
                pages=_pages(session, document),
                status=DocumentStatus(document.status),
                error=public_text(document.error, settings),
                attempts=document.attempts,
                created_at=document.created_at,
                updated_at=document.updated_at,
                started_at=document.started_at,
                finished_at=document.finished_at,
                fields=repository.field_values(extraction) if extraction else {},
                data=extraction.data if extraction else None,
                confidence=extraction.confidence if extraction else None,
                field_confidence=repository.field_confidences(extraction) if extraction else {},
                field_boxes=repository.field_boxes(extraction) if extraction else {},
                reviewed_by=extraction.reviewer if extraction else None,
                note=extraction.note if extraction else None,
                model=ModelRef(id=extraction.model.id, name=extraction.model.name)
                if extraction and extraction.model
                else None,
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
