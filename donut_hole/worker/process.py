"""The work itself, as plain functions of a :class:`~donut_hole.worker.runtime.Runtime` (no Celery here).

:func:`process_group` reads one group of documents in one forward pass::

    claim      one transaction: skip documents already done by this model or failed (a redelivered message),
               give up on documents tried too often, mark the rest ``processing`` (attempts + 1)
    fetch      bytes from the store       ObjectNotFound / ObjectTooLarge / StorageError → failed
                                          TransientStorageError → queued again with the reason,
                                          retried later (failed on the last try)
    open       the source's pages         a PDF or multi-frame image seen for the first time: its page
                                          count and sha256 recorded, one ``queued`` row per further page
                                          written and sent as groups of their own; an encrypted or
                                          broken PDF, too many pages → failed
    decode     the page → RGB image       DocumentError → failed (a PDF page is rendered to fit the
                                          model's input)
    predict    the group's pages through the reader's decoding engine: a page enters its running batch
               when a row frees and comes out as soon as it is read (models the engine does not read: one
               batched generate call for the group)
    validate   the parse against its document schema: a mismatch is a *note*, not a failure
    persist    one transaction per document, as soon as it is read: idempotent upsert of the extraction
               and its fields, ``done``

A document is one page (:mod:`donut_hole.db.models`): the pages of a PDF are read in the same batched
forward passes as single images, each page in whatever group it is sent with, and a group that holds
several pages of one source fetches and opens it once. A failed document never stops the rest of its group.

Schema mismatches: the extraction is stored with
``extractions.note = "schema: <reason>"`` and the document is ``done``, because a partial or unexpected
reading is still worth searching and reviewing; ``status = 'failed'`` is kept for documents that could not
be read at all.

:func:`expand_prefix` lists an S3 prefix (or a local directory) into a batch and sends its groups.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery.exceptions import SoftTimeLimitExceeded

from donut_hole.db import DocumentStatus, repository, session_scope
from donut_hole.db.models import BatchStatus, source_uri
from donut_hole.documents.schemas import schema_note
from donut_hole.logs import log_event
from donut_hole.model.locate import input_geometry
from donut_hole.storage import (
    ObjectNotFound,
    ObjectTooLarge,
    StorageError,
    TransientStorageError,
)
from donut_hole.worker import metrics
from donut_hole.worker.batching import Grouper, chunked
from donut_hole.worker.fields import field_rows
from donut_hole.worker.runtime import Runtime

if TYPE_CHECKING:
    from donut_hole.scans import SourceInfo

log = logging.getLogger("donut_hole.worker")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".pdf")
LISTING_PAGE = 256  # URIs written per transaction while a prefix is expanded


@dataclass
class _Job:
    document_id: str
    batch_id: str
    uri: str
    attempts: int
    page: int = 1
    page_count: int | None = None
    source_sha256: str | None = None
    data: bytes = b""
    image: Any = None
    size: tuple[int, int] | None = None  # the decoded page's (width, height), kept after its pixels go
    source: SourceInfo | None = None  # to record with the document's end (a single page seen the first time)

    @property
    def source_uri(self) -> str:
        return source_uri(self.uri, page=self.page)


@dataclass
class GroupOutcome:
    """What happened to each document of a group; ``retry`` maps ids to the transient error to retry on."""

    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    retry: dict[str, str] = field(default_factory=dict)
    claimed: list[str] = field(default_factory=list)  # marked processing by this call (committed)
    claim_ended: bool = False  # the claim's transaction came back (a database error before: it may have
    # committed all the same, the connection lost on the way back)


def is_image_uri(uri: str) -> bool:
    """Whether a listed object looks like a scan, an image or a PDF (by its suffix); ``metadata.jsonl``
    and the like are not."""
    name = uri.rsplit("/", 1)[-1]
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def process_group(
    rt: Runtime,
    document_ids: Sequence[str],
    *,
    last_try: bool = False,
    resumed: Collection[str] = (),
    outcome: GroupOutcome | None = None,
    send: Callable[[list[str]], None] | None = None,
    deadline: float | None = None,
) -> GroupOutcome:
    """Read and store a group of documents (see the module docstring); safe to run again on the same ids.

    ``last_try``: transient errors fail the document instead of asking for a retry. Database errors
    (``sqlalchemy.exc.OperationalError``) propagate: the caller retries the whole group, and documents
    finished before the error are skipped on that retry. ``resumed``: documents an earlier try of the same
    message claimed before a database error; their attempt goes on and is not counted again. Pass
    ``outcome`` to see what was claimed even when an error propagates. ``send`` sends a group of new page
    documents (a PDF's further pages); without it, or when it fails, a watchdog sends them.

    ``deadline`` (``time.monotonic()``): the group's time limit. Past it, the group stops with
    :class:`~celery.exceptions.SoftTimeLimitExceeded` after a fetch and before the forward pass, also when
    the pool's own soft-limit signal came during a library call that swallowed it (botocore turns any
    exception raised during an HTTP request into an error it retries).
    """
    started = time.perf_counter()
    outcome = outcome if outcome is not None else GroupOutcome()
    jobs = _claim(rt, document_ids, outcome, resumed=resumed)
    fetched_sources: dict[str, bytes] = {}  # pages of one source in this group: fetched once
    fetched = []
    for job in jobs:
        if _fetch(rt, job, outcome, last_try=last_try, cache=fetched_sources):
            fetched.append(job)
        _check_time(deadline)
    opened_sources: dict[str, SourceInfo] = {}
    opened = [job for job in fetched if _open(rt, job, outcome, send=send, cache=opened_sources)]
    fetched_sources.clear()
    ready = [job for job in opened if _decode(rt, job, outcome)]
    if not ready:
        return outcome
    _check_time(deadline)
    t0, persist_s = time.perf_counter(), 0.0
    for job, prediction in _read(rt, ready, deadline):
        t1 = time.perf_counter()
        latency_s = t1 - started
        try:
            _persist(rt, job, prediction, latency_ms=latency_s * 1000)
        except repository.DocumentNotFound:  # its batch was deleted meanwhile
            log_event(log, "document.missing", level=logging.WARNING, **_ids(job))
            outcome.skipped.append(job.document_id)
            continue
        finally:
            persist_s += time.perf_counter() - t1
        outcome.done.append(job.document_id)
        metrics.DOCUMENTS_PROCESSED.inc()
        metrics.DOCUMENT_LATENCY.observe(latency_s)
    forward_s = time.perf_counter() - t0 - persist_s
    metrics.FORWARD_SECONDS.observe(forward_s)
    metrics.BATCH_SIZE.observe(len(ready))
    log_event(log, "group.forward", documents=len(ready), seconds=round(forward_s, 3))
    return outcome


def _read(rt: Runtime, jobs: list[_Job], deadline: float | None) -> Iterator[tuple[_Job, Any]]:
    """Each job with its prediction, as soon as it is read: through the reader's decoding engine, pages enter
    its running batch as rows free and each comes out when it ends (the group's time limit checked before
    each page's encoder pass); other models read the group in one batch."""
    reader = rt.reader
    if not reader.engine_ready():
        yield from zip(
            jobs, reader.predict_detailed([job.image for job in jobs], batch_size=len(jobs)), strict=True
        )
        return

    def pages() -> Iterator[tuple[int, Any]]:
        for index, job in enumerate(jobs):
            _check_time(deadline)
            yield index, reader.pixel_values([job.image])
            job.image = None  # its pixels are all the engine needs

    for index, prediction in reader.stream(pages(), slots=len(jobs)):
        yield jobs[index], prediction


def _check_time(deadline: float | None) -> None:
    """Stop the group when its time limit has passed (see :func:`process_group`)."""
    if deadline is not None and time.monotonic() >= deadline:
        raise SoftTimeLimitExceeded()


def _claim(
    rt: Runtime, document_ids: Sequence[str], outcome: GroupOutcome, *, resumed: Collection[str] = ()
) -> list[_Job]:
    max_attempts = rt.settings.max_retries + 1
    model_id = rt.model_id
    jobs: list[_Job] = []
    # Sorted: rows are locked in one order everywhere, so overlapping groups cannot deadlock.
    with session_scope(rt.sessions) as session:
        for document_id in sorted(set(document_ids)):
            document = repository.get_document(session, document_id=document_id)
            if document is None:
                log_event(log, "document.missing", level=logging.WARNING, document_id=document_id)
                outcome.skipped.append(document_id)
                continue
            ids: dict[str, Any] = {"batch_id": document.batch_id, "document_id": document_id}
            finished = document.status == DocumentStatus.failed or (
                document.status == DocumentStatus.done
                and any(e.model_id == model_id for e in document.extractions)
            )
            if finished:  # a redelivered message: a document's end (done by this model, or failed) is final
                log_event(log, "document.skipped", reason=f"already {document.status.value}", **ids)
                outcome.skipped.append(document_id)
                metrics.DOCUMENTS_SKIPPED.inc()
                continue
            resuming = document_id in resumed and document.status == DocumentStatus.processing
            if document.attempts >= max_attempts and not resuming:
                reason = (
                    f"gave up after {document.attempts} attempts: the worker stopped while reading this "
                    "document (crash, out of memory or time limit; see the worker logs)"
                )
                repository.mark_failed(session, document_id=document_id, error=reason)
                _failed(outcome, reason, "retries_exhausted", **ids)
                continue
            document = repository.mark_processing(session, document_id=document_id, count=not resuming)
            jobs.append(
                _Job(
                    document_id,
                    document.batch_id,
                    document.uri,
                    document.attempts,
                    page=document.page,
                    page_count=document.page_count,
                    source_sha256=document.source_sha256,
                )
            )
    outcome.claimed = [job.document_id for job in jobs]  # committed
    outcome.claim_ended = True
    return jobs


def _fetch(rt: Runtime, job: _Job, outcome: GroupOutcome, *, last_try: bool, cache: dict[str, bytes]) -> bool:
    """Read the scan's bytes into ``job.data``; False when the document failed or waits for a retry."""
    try:
        if job.source_uri in cache:
            job.data = cache[job.source_uri]
            return True
        job.data = rt.store.get(job.source_uri, max_bytes=rt.settings.max_image_bytes)
        if job.data:
            cache[job.source_uri] = job.data
            return True
        _fail(rt, job, outcome, "empty object: the scan has no bytes", "unreadable")
    except ObjectNotFound:
        _fail(
            rt, job, outcome, f"object not found: {job.source_uri} does not exist in the store", "not_found"
        )
    except ObjectTooLarge as exc:
        _fail(rt, job, outcome, f"scan too large: {exc}", "too_large")
    except TransientStorageError as exc:
        if last_try:
            budget = rt.settings.retry_budget_s
            reason = (
                f"{repository.TRANSIENT}the object store did not answer for {budget:g} s of retries: {exc}"
            )
            _fail(rt, job, outcome, reason, "retries_exhausted")
        else:
            with session_scope(rt.sessions) as session:
                repository.mark_retrying(session, document_id=job.document_id, reason=str(exc))
            outcome.retry[job.document_id] = str(exc)
            log_event(log, "document.retry", reason=str(exc), **_ids(job), level=logging.WARNING)
    except StorageError as exc:
        _fail(rt, job, outcome, f"cannot read the scan: {exc}", "storage")
    return False


def _open(
    rt: Runtime,
    job: _Job,
    outcome: GroupOutcome,
    *,
    send: Callable[[list[str]], None] | None,
    cache: dict[str, SourceInfo],
) -> bool:
    """Look at the source's pages (:func:`~donut_hole.scans.inspect_source`); False when the document
    failed. The first time a source with several pages is opened its further pages become documents of
    the batch (committed before this group's forward pass, so the batch is never seen finished early) and
    are sent in groups of their own."""
    from donut_hole.scans import DocumentError, inspect_source

    try:
        if job.source_uri not in cache:
            cache[job.source_uri] = inspect_source(job.data)
        info = cache[job.source_uri]
    except DocumentError as exc:
        _fail(rt, job, outcome, exc.reason, "unreadable")
        return False
    if job.source_sha256 is not None and info.sha256 != job.source_sha256:
        reason = "the source file changed after its pages were counted (its sha256 differs): submit it again"
        _fail(rt, job, outcome, reason, "changed")
        return False
    if job.page_count is not None:
        return True
    limit = rt.settings.max_pages
    if info.page_count > limit:
        job.source = info
        reason = f"too many pages: {info.page_count}, the limit is {limit} (DONUT_HOLE_MAX_PAGES)"
        _fail(rt, job, outcome, reason, "too_many_pages")
        return False
    job.page_count, job.source_sha256 = info.page_count, info.sha256
    if info.page_count == 1:
        job.source = info  # recorded with the document's end, in the same transaction
        return True
    with session_scope(rt.sessions) as session:
        page_ids = repository.add_pages(
            session, document_id=job.document_id, page_count=info.page_count, source_sha256=info.sha256
        )
    log_event(log, "document.pages", kind=info.kind, pages=info.page_count, new=len(page_ids), **_ids(job))
    if send is not None:
        try:
            for group in chunked(page_ids, rt.settings.batch_size):
                send(group)
        except SoftTimeLimitExceeded:  # the group's time is up, not the broker down
            raise
        except Exception as exc:  # the broker is down: the pages stay unsent and a watchdog sends them
            log_event(log, "document.pages_unsent", level=logging.WARNING, error=str(exc), **_ids(job))
    return True


def _decode(rt: Runtime, job: _Job, outcome: GroupOutcome) -> bool:
    """Decode ``job.data`` into ``job.image``; False when the document failed (not an image, corrupt)."""
    from donut_hole.scans import DocumentError

    try:
        job.image = rt.reader.load_page(job.data, page=job.page)
        job.size = job.image.size
    except DocumentError as exc:
        _fail(rt, job, outcome, exc.reason, "unreadable")
        return False
    finally:
        job.data = b""  # the decoded image is all that is needed from here on
    return True


def _persist(rt: Runtime, job: _Job, prediction: Any, *, latency_ms: float) -> None:
    reader = rt.reader
    geometry = None
    if job.size is not None and getattr(prediction, "points", None) is not None:
        geometry = input_geometry(reader.processor.image_processor, job.size)
    rows = field_rows(
        prediction,
        reader.processor.tokenizer,
        calibration=reader.calibration,
        geometry=geometry,
        stride=reader.stride,
    )
    note = (
        "; ".join(n for n in (getattr(prediction, "note", None), schema_note(prediction.data)) if n) or None
    )
    with session_scope(rt.sessions) as session:
        _record_source(session, job)
        repository.save_extraction(
            session,
            document_id=job.document_id,
            model_id=rt.model_id,
            raw_sequence=prediction.sequence,
            data=prediction.data,
            confidence=prediction.confidence,
            latency_ms=round(latency_ms, 3),
            fields=rows,
            note=note,
            review_threshold=rt.settings.review_threshold,
            doubtful=note is not None,
        )
    log_event(
        log,
        "document.done",
        fields=len(rows),
        confidence=round(prediction.confidence, 4),
        latency_ms=round(latency_ms, 1),
        note=note,
        **_ids(job),
    )


def fail_unfinished(rt: Runtime, document_ids: Sequence[str], *, reason: str, kind: str) -> list[str]:
    """Mark the documents of a group that are neither ``done`` nor ``failed`` as ``failed`` with ``reason``.

    Used when a group cannot go on (time limit, retries used up, an unexpected error). Returns their ids.
    """
    failed: list[str] = []
    with session_scope(rt.sessions) as session:
        for document_id in sorted(set(document_ids)):
            document = repository.get_document(session, document_id=document_id)
            if document is None or document.status in (DocumentStatus.done, DocumentStatus.failed):
                continue
            repository.mark_failed(session, document_id=document_id, error=reason)
            failed.append(document_id)
            _count_failure(reason, kind, batch_id=document.batch_id, document_id=document_id)
    return failed


def expand_prefix(rt: Runtime, *, batch_id: str, prefix_uri: str, send: Callable[[list[str]], None]) -> int:
    """List ``prefix_uri`` into ``batch_id`` and send its documents in groups; returns the images found.

    Safe to run again (a retry after a transient error): listed URIs are added once
    (``repository.add_documents``) and documents still queued are sent again. Pages of
    :data:`LISTING_PAGE` URIs are written per transaction; a partial page is written and sent once its
    first URI has waited ``batch_wait_s``. Objects that are not images (by suffix) are left out.
    A listing error that will not pass marks the batch ``failed`` with the reason.
    """
    s = rt.settings
    page_size = s.batch_size * max(1, LISTING_PAGE // s.batch_size)
    pages = Grouper(size=page_size, max_wait_s=s.batch_wait_s)
    found = 0

    def write(page: list[str]) -> None:
        with session_scope(rt.sessions) as session:
            queued = repository.add_documents(session, batch_id=batch_id, uris=page)
        for group in chunked(queued, s.batch_size):
            send(group)

    try:
        for uri in rt.store.list(prefix_uri):
            if not is_image_uri(uri):
                continue
            found += 1
            for page in pages.add([uri]):
                write(page)
            if pages.due():
                for page in pages.flush():
                    write(page)
        for page in pages.flush():
            write(page)
    except TransientStorageError:
        raise
    except StorageError as exc:
        _set_batch(rt, batch_id, BatchStatus.failed, f"cannot list {prefix_uri}: {exc}")
        return found
    if found == 0:
        _set_batch(
            rt, batch_id, BatchStatus.failed, f"no images under {prefix_uri} (looked for {IMAGE_SUFFIXES})"
        )
    else:
        _set_batch(rt, batch_id, BatchStatus.accepted, None)
    log_event(log, "batch.expanded", batch_id=batch_id, prefix=prefix_uri, documents=found)
    return found


def mark_batch_failed(rt: Runtime, batch_id: str, reason: str) -> None:
    """The batch's listing ended for good: status ``failed`` with ``reason``."""
    _set_batch(rt, batch_id, BatchStatus.failed, reason)


def _set_batch(rt: Runtime, batch_id: str, status: BatchStatus, error: str | None) -> None:
    with session_scope(rt.sessions) as session:
        repository.set_batch_status(session, batch_id=batch_id, status=status, error=error)
    if error:
        log_event(log, "batch.failed", level=logging.WARNING, batch_id=batch_id, reason=error)


def _record_source(session: Any, job: _Job) -> None:
    if job.source is not None:
        repository.set_source(
            session,
            document_id=job.document_id,
            page_count=job.source.page_count,
            source_sha256=job.source.sha256,
        )


def _fail(rt: Runtime, job: _Job, outcome: GroupOutcome, reason: str, kind: str) -> None:
    with session_scope(rt.sessions) as session:
        _record_source(session, job)
        repository.mark_failed(session, document_id=job.document_id, error=reason)
    _failed(outcome, reason, kind, **_ids(job))


def _failed(outcome: GroupOutcome, reason: str, kind: str, *, batch_id: str, document_id: str) -> None:
    outcome.failed[document_id] = reason
    _count_failure(reason, kind, batch_id=batch_id, document_id=document_id)


def _count_failure(reason: str, kind: str, *, batch_id: str, document_id: str) -> None:
    metrics.DOCUMENTS_FAILED.labels(reason=kind).inc()
    log_event(
        log,
        "document.failed",
        level=logging.WARNING,
        reason=reason,
        kind=kind,
        batch_id=batch_id,
        document_id=document_id,
    )


def _ids(job: _Job) -> dict[str, Any]:
    return {"batch_id": job.batch_id, "document_id": job.document_id}
