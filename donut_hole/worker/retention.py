"""Deleting finished batches: their rows and the scans the object store holds for them.

The API's ``DELETE /v1/batches/{id}``, ``donut-hole delete BATCH_ID`` and ``donut-hole purge --older-than
30d`` call these functions. From the store only uploads are deleted (objects under its ``uploads/`` prefix:
scans posted to the API or submitted as local files), and only those no other batch reads; scans that a
batch read from your own bucket or prefix stay where they are.

The order makes a failure safe to retry: the rows are deleted in a transaction that commits only after the
store has deleted the uploads. When the store refuses, nothing is committed; uploads already removed are
gone, and the next try deletes the rest (a missing object is not an error).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from donut_hole.db import repository, session_scope
from donut_hole.logs import log_event
from donut_hole.services import Services
from donut_hole.storage import ObjectStore
from donut_hole.worker.enqueue import UPLOAD_PREFIX

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Deleted:
    """One deleted batch: how many document rows (pages) and uploaded files went with it."""

    batch_id: str
    documents: int
    uploads: int


def delete_batch(services: Services, *, batch_id: str) -> Deleted:
    """Delete a finished batch, its results and its uploads. Raises ``repository.BatchNotFound``,
    ``repository.BatchBusy`` (documents still queued or being read: nothing changes) or
    ``StorageError`` (the store refused a deletion: the batch stays, try again)."""
    store = services.store
    with session_scope(services.sessions) as session:
        removed = repository.delete_batch(session, batch_id=batch_id)
        prefix = uploads_prefix(store)
        uploads = [uri for uri in removed.sources if uri.startswith(prefix)]
        shared = repository.still_read(session, uris=uploads)  # another batch reads it too: it stays
        uploads = [uri for uri in uploads if uri not in shared]
        store.delete(uploads)  # before the commit: a refusal leaves every row in place
    log_event(log, "batch.deleted", batch_id=batch_id, documents=removed.documents, uploads=len(uploads))
    return Deleted(batch_id, removed.documents, len(uploads))


def purge(services: Services, *, created_before: datetime) -> Iterator[Deleted]:
    """Delete every finished batch created before ``created_before``, oldest first, one transaction each;
    batches with work under way are left for a later purge."""
    done: set[str] = set()
    while True:
        with session_scope(services.sessions) as session:
            batch_ids = [
                batch_id
                for batch_id in repository.finished_batches(session, created_before=created_before)
                if batch_id not in done
            ]
        if not batch_ids:
            return
        for batch_id in batch_ids:
            done.add(batch_id)
            try:
                yield delete_batch(services, batch_id=batch_id)
            except (repository.BatchNotFound, repository.BatchBusy):
                continue  # deleted, or queued again, since it was listed


def uploads_prefix(store: ObjectStore) -> str:
    """Where the scans this system wrote to ``store`` begin (``uploads/``): a URI under it is no one else's.

    >>> from donut_hole.storage import LocalStore
    >>> uploads_prefix(LocalStore("/srv/scans"))
    'file:///srv/scans/uploads/'
    """
    return store.uri(UPLOAD_PREFIX) + "/"
