"""Submit work: write the batch and its documents, commit, and only then send messages carrying ids.

The API and the CLI call these functions; they are the only way work enters the queue. They take the
process's :class:`~donut_hole.services.Services` (store, Celery app, and sessions when the caller passes
none) and, optionally, the caller's ``session``, which is committed before anything is sent::

    batch_id = submit_uris(services, uris=["s3://scans/a.jpg", "s3://scans/b.jpg"], source="api")
    batch_id = submit_prefix(services, prefix_uri="s3://scans/2025-01-07/", session=request_session)
    batch_id, document_id = submit_upload(services, data=jpeg_bytes, filename="label.jpg")

Each message carries a group of up to ``batch_size`` document ids (one forward pass; see
:mod:`.batching`). Bad input raises :class:`EnqueueError` (a ``ValueError``) before anything is written;
an S3 bucket outside ``DONUT_HOLE_ALLOWED_BUCKETS`` raises its subclass :class:`BucketNotAllowed` (the API
answers 403), whoever submits: :func:`allowed_buckets` is the one rule.
When the broker cannot be reached after the rows are committed, :class:`BrokerUnavailable` names the batch;
:func:`resend_queued` (``donut-hole enqueue --resend ID``) sends its queued documents again;
:func:`recover_stalled` sends again the documents a vanished worker left ``processing``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import timedelta
from pathlib import Path, PurePosixPath

from sqlalchemy.orm import Session

from donut_hole.db import DocumentStatus, repository, session_scope
from donut_hole.db.models import utcnow
from donut_hole.logs import log_event
from donut_hole.services import Services
from donut_hole.settings import Settings
from donut_hole.storage import (
    InvalidLocation,
    LocalStore,
    ObjectStore,
    S3Store,
    check_key,
    parse_s3_uri,
)
from donut_hole.worker.app import MAX_RETRY_DELAY_S, TASK_EXPAND, TASK_PROCESS, stalled_after_s
from donut_hole.worker.batching import chunked

log = logging.getLogger("donut_hole.enqueue")

MAX_DOCUMENTS = 100_000  # per call; larger sets go through an S3 prefix
UPLOAD_PREFIX = "uploads"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2.0}


class EnqueueError(ValueError):
    """The request cannot be queued as given; the message says what to change."""


class BucketNotAllowed(EnqueueError):
    """The request names S3 buckets outside ``DONUT_HOLE_ALLOWED_BUCKETS`` (and the store's own bucket)."""

    def __init__(self, refused: Sequence[str], allowed: Iterable[str]) -> None:
        listed = ", ".join(sorted(allowed))
        super().__init__(f"bucket(s) not allowed: {', '.join(refused)}; allowed: {listed}")
        self.refused = list(refused)


class BrokerUnavailable(RuntimeError):
    """The batch is stored but its messages could not be sent; ``batch_id`` can be re-sent later."""

    def __init__(self, batch_id: str, error: BaseException) -> None:
        super().__init__(
            f"batch {batch_id} is stored but the broker is unreachable ({error}); its documents stay "
            f"queued: run `donut-hole enqueue --resend {batch_id}` once the broker is back"
        )
        self.batch_id = batch_id


# ------------------------------------------------------------------------------------------ entry points


def submit_uris(services: Services, *, uris: list[str], source: str, session: Session | None = None) -> str:
    """Queue the scans at ``uris`` (``s3://bucket/key`` or keys of the configured store) as one batch."""
    batch_id, _ = _submit(services, _resolve_all(services, uris), source=source, session=session)
    return batch_id


def submit_prefix(services: Services, *, prefix_uri: str, session: Session | None = None) -> str:
    """Queue every image under ``prefix_uri``; a task lists it, so this returns at once.

    The batch starts ``expanding`` and becomes ``accepted`` once every document row exists (``failed``
    with a reason when the prefix cannot be listed or holds no image).
    """
    prefix = _resolve_prefix(services, prefix_uri)
    with _transaction(services, session) as writing:
        batch = repository.create_batch(writing, source=f"prefix {prefix}", uris=[], expanding=True)
        batch_id = batch.id
    try:
        services.celery.send_task(
            TASK_EXPAND,
            args=[batch_id, prefix],
            queue=services.settings.queue,
            retry=True,
            retry_policy=_PUBLISH_RETRY,
        )
    except Exception as exc:  # kombu raises several connection error types
        raise BrokerUnavailable(batch_id, exc) from exc
    log_event(log, "batch.submitted", batch_id=batch_id, prefix=prefix)
    return batch_id


def submit_upload(
    services: Services, *, data: bytes, filename: str, session: Session | None = None
) -> tuple[str, str]:
    """Store one uploaded scan under ``uploads/<uuid>/<safe filename>``, then queue it: (batch, document)."""
    settings = services.settings
    _check_upload(settings, data, filename)
    store = _store(services)
    uri = store.put(f"{UPLOAD_PREFIX}/{uuid.uuid4()}/{safe_filename(filename)}", data)
    batch_id, document_ids = _submit(
        services,
        [_resolve(store, uri)],
        source="upload",
        sha256s=[_sha256(data)],
        session=session,
    )
    return batch_id, document_ids[0]


def submit_files(services: Services, *, paths: Sequence[Path], source: str = "cli") -> str:
    """Upload local scans to the store (``uploads/<uuid>/<name>``) and queue them as one batch."""
    if not paths:
        raise EnqueueError("no files to submit")
    if len(paths) > MAX_DOCUMENTS:
        raise EnqueueError(f"{len(paths)} files is more than {MAX_DOCUMENTS}; upload them and use a prefix")
    settings = services.settings
    store = _store(services)
    folder = f"{UPLOAD_PREFIX}/{uuid.uuid4()}"
    names: dict[str, Path] = {}
    for path in paths:
        name = safe_filename(path.name)
        if name in names:
            raise EnqueueError(f"two files would be stored as {name!r}: {names[name]} and {path}")
        names[name] = path
    uris, shas = [], []
    for name, path in names.items():
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise EnqueueError(f"cannot read {path}: {exc.strerror or exc}") from exc
        _check_upload(settings, data, str(path))
        uris.append(_resolve(store, store.put(f"{folder}/{name}", data)))
        shas.append(_sha256(data))
    batch_id, _ = _submit(services, uris, source=source, sha256s=shas)
    return batch_id


def resend_queued(services: Services, *, batch_id: str) -> int:
    """Send messages again for the batch's documents that are still ``queued``; returns how many."""
    with session_scope(services.sessions) as session:
        try:
            rows = repository.results_for_batch(session, batch_id=batch_id)
        except repository.BatchNotFound as exc:
            raise EnqueueError(str(exc)) from exc
    queued = [row["document_id"] for row in rows if row["status"] == DocumentStatus.queued.value]
    send_groups(services, queued, batch_id=batch_id)
    return len(queued)


def recover_stalled(services: Services, *, older_than_s: float | None = None) -> int:
    """Send again the documents a vanished worker left behind; returns how many.

    They are ``processing`` for longer than ``older_than_s``, or ``queued`` for a retry and untouched for
    longer than that plus the longest retry delay (a worker holds a retry's message until its countdown
    ends). Their worker stopped without finishing them (killed, out of memory, a lost machine), and a
    broker that does not redeliver (the embedded SQLite transport) would leave them there for good. The
    default age is :func:`~donut_hole.worker.app.stalled_after_s`, past the hard time limit, so no live
    worker is still reading them; a copy that still arrives later finds them done and skips them. Each
    worker runs this once a minute (:mod:`.watchdog`); ``donut-hole enqueue --recover`` runs it by hand.
    """
    age_s = older_than_s if older_than_s is not None else stalled_after_s(services.settings)
    now = utcnow()
    reason = (
        f"sent again: no worker finished it (processing for more than {age_s:g} s, or waiting for a "
        f"retry for more than {age_s + MAX_RETRY_DELAY_S:g} s: its worker was killed, ran out of memory "
        "or was lost)"
    )
    # The messages go out before the commit: if the broker is down the update is rolled back and the
    # documents stay as they were for the next look, never 'queued' with no message on its way.
    with session_scope(services.sessions) as session:
        rows = repository.requeue_stalled(
            session,
            started_before=now - timedelta(seconds=age_s),
            waiting_before=now - timedelta(seconds=age_s + MAX_RETRY_DELAY_S),
            reason=reason,
        )
        by_batch: dict[str, list[str]] = {}
        for document_id, batch_id in rows:
            by_batch.setdefault(batch_id, []).append(document_id)
        for batch_id, document_ids in by_batch.items():
            send_groups(services, sorted(document_ids), batch_id=batch_id)
    for batch_id, document_ids in by_batch.items():
        log_event(log, "documents.recovered", batch_id=batch_id, documents=len(document_ids))
    return len(rows)


# --------------------------------------------------------------------------------------------- sending


def send_group(services: Services, document_ids: list[str]) -> None:
    """One message: a group of document ids for one forward pass, on the settings' queue."""
    services.celery.send_task(
        TASK_PROCESS,
        args=[document_ids],
        queue=services.settings.queue,
        retry=True,
        retry_policy=_PUBLISH_RETRY,
    )


def send_groups(services: Services, document_ids: list[str], *, batch_id: str) -> None:
    """Send ``document_ids`` in groups of ``batch_size`` over one broker connection."""
    app, settings = services.celery, services.settings
    try:
        with app.producer_or_acquire() as producer:
            for group in chunked(document_ids, settings.batch_size):
                app.send_task(
                    TASK_PROCESS,
                    args=[group],
                    queue=settings.queue,
                    producer=producer,
                    retry=True,
                    retry_policy=_PUBLISH_RETRY,
                )
    except Exception as exc:  # kombu raises several connection error types
        raise BrokerUnavailable(batch_id, exc) from exc


@contextmanager
def _transaction(services: Services, session: Session | None) -> Iterator[Session]:
    """The caller's ``session``, committed when the block ends, or a new one of ``services``."""
    if session is None:
        with session_scope(services.sessions) as own:
            yield own
    else:
        yield session
        session.commit()  # a failure leaves the rollback to the caller, who owns the session


def _submit(
    services: Services,
    uris: list[str],
    *,
    source: str,
    sha256s: Sequence[str | None] | None = None,
    session: Session | None = None,
) -> tuple[str, list[str]]:
    with _transaction(services, session) as writing:
        batch = repository.create_batch(writing, source=source, uris=uris, sha256s=sha256s)
        batch_id, document_ids = batch.id, [document.id for document in batch.documents]
    # Committed: a worker that takes a message is sure to find its rows.
    send_groups(services, document_ids, batch_id=batch_id)
    log_event(log, "batch.submitted", batch_id=batch_id, documents=len(document_ids), source=source)
    return batch_id, document_ids


# ------------------------------------------------------------------------------------------ validation


def safe_filename(filename: str) -> str:
    """A file name safe as the last part of a key: ``"../My Scan (1).JPG"`` → ``"My_Scan_1_.JPG"``."""
    name = PurePosixPath(str(filename).replace("\\", "/")).name
    name = _UNSAFE.sub("_", name).strip("._")[-120:]
    return name or "upload"


def _check_upload(settings: Settings, data: bytes, filename: str) -> None:
    if not isinstance(data, bytes | bytearray) or not data:
        raise EnqueueError(f"{filename or 'the upload'} is empty")
    if len(data) > settings.max_image_bytes:
        raise EnqueueError(
            f"{filename or 'the upload'} is {len(data):,} bytes; the limit is {settings.max_image_bytes:,}"
        )


def _resolve_all(services: Services, uris: list[str]) -> list[str]:
    if isinstance(uris, str) or not isinstance(uris, list | tuple):
        raise EnqueueError("uris must be a list of URIs")
    if not uris:
        raise EnqueueError("no documents: give at least one URI")
    if len(uris) > MAX_DOCUMENTS:
        raise EnqueueError(
            f"{len(uris)} URIs is more than {MAX_DOCUMENTS} per batch; submit a prefix instead"
        )
    check_buckets(services.settings, uris)
    store = _store(services)
    resolved: list[str] = []
    seen: dict[str, str] = {}
    for uri in uris:
        full = _resolve(store, uri)
        if full in seen:
            raise EnqueueError(f"duplicate document: {uri!r} and {seen[full]!r} name the same object")
        seen[full] = uri
        resolved.append(full)
    return resolved


def _resolve(store: ObjectStore, uri: object) -> str:
    """The full URI of a document (``s3://bucket/key`` or ``file:///...``) that the workers can read."""
    if not isinstance(uri, str) or not uri.strip():
        raise EnqueueError(f"a document URI is empty or not a string: {uri!r}")
    if uri != uri.strip() or any(ch in uri for ch in "\r\n\t\x00"):
        raise EnqueueError(f"malformed URI {uri!r}: it has surrounding whitespace or control characters")
    try:
        if uri.startswith("s3://"):
            _, key = parse_s3_uri(uri)
            if key.endswith("/"):
                raise EnqueueError(f"{uri!r} names a prefix, not an object; submit it as a prefix")
            _check_s3(store, uri)
            return uri
        if uri.startswith("file://"):
            if not isinstance(store, LocalStore):
                raise EnqueueError(f"{uri!r} is a local file, but the object store is {store.url}")
            return store.path_for(uri).as_uri()
        if "://" in uri:
            raise EnqueueError(f"unsupported URI {uri!r}: use s3://bucket/key or a key of the object store")
        key = check_key(uri)
        if isinstance(store, S3Store):
            bucket, full_key = store.locate(key)
            return f"s3://{bucket}/{full_key}"
        if isinstance(store, LocalStore):
            return store.path_for(key).as_uri()
    except InvalidLocation as exc:
        raise EnqueueError(f"malformed URI: {exc}") from exc
    raise EnqueueError(f"cannot resolve {uri!r} against the store {store.url}")


def _resolve_prefix(services: Services, prefix_uri: object) -> str:
    if not isinstance(prefix_uri, str) or not prefix_uri.strip():
        raise EnqueueError("the prefix is empty: give s3://bucket/prefix/")
    check_buckets(services.settings, [prefix_uri])
    store = _store(services)
    try:
        if prefix_uri.startswith("s3://"):
            parse_s3_uri(prefix_uri, require_key=False)
            _check_s3(store, prefix_uri)
            return prefix_uri
        if prefix_uri.startswith("file://"):
            if not isinstance(store, LocalStore):
                raise EnqueueError(f"{prefix_uri!r} is local, but the object store is {store.url}")
            store.path_for(prefix_uri)
            return prefix_uri
        if "://" in prefix_uri:
            raise EnqueueError(f"unsupported prefix {prefix_uri!r}: use s3://bucket/prefix/")
        check_key(prefix_uri)
        return prefix_uri
    except InvalidLocation as exc:
        raise EnqueueError(f"malformed prefix: {exc}") from exc


def allowed_buckets(settings: Settings) -> set[str] | None:
    """Buckets a batch may read: ``allowed_buckets`` plus the store's own bucket; ``None``: any bucket."""
    if not settings.allowed_buckets:
        return None
    allowed = set(settings.allowed_buckets)
    if settings.storage_url.startswith("s3://"):
        with suppress(InvalidLocation):  # a malformed DONUT_HOLE_STORAGE_URL is reported with the store
            allowed.add(parse_s3_uri(settings.storage_url, require_key=False)[0])
    return allowed


def check_buckets(settings: Settings, uris: Iterable[object]) -> None:
    """:class:`BucketNotAllowed` naming every bucket of the ``s3://`` URIs that :func:`allowed_buckets`
    leaves out; other URIs, and malformed ones (refused later with the reason), are not looked at."""
    allowed = allowed_buckets(settings)
    if allowed is None:
        return
    buckets: set[str] = set()
    for uri in uris:
        if isinstance(uri, str) and uri.startswith("s3://"):
            with suppress(InvalidLocation):
                buckets.add(parse_s3_uri(uri, require_key=False)[0])
    refused = sorted(buckets - allowed)
    if refused:
        raise BucketNotAllowed(refused, allowed)


def _check_s3(store: ObjectStore, uri: str) -> None:
    if not isinstance(store, S3Store):
        raise EnqueueError(
            f"{uri!r} is in S3, but the object store is the local directory {store.url}; "
            "set DONUT_HOLE_STORAGE_URL=s3://bucket to read from S3"
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _store(services: Services) -> ObjectStore:
    try:
        return services.store
    except InvalidLocation as exc:
        raise EnqueueError(f"DONUT_HOLE_STORAGE_URL: {exc}") from exc
