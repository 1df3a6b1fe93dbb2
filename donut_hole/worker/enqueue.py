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
import stat
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path, PurePosixPath

from sqlalchemy.orm import Session

from donut_hole.db import repository, session_scope
from donut_hole.logs import log_event
from donut_hole.queue import TASK_EXPAND
from donut_hole.services import Services
from donut_hole.settings import Settings
from donut_hole.storage import (
    InvalidLocation,
    LocalStore,
    ObjectStore,
    S3Store,
    StorageError,
    TransientStorageError,
    check_key,
    parse_s3_uri,
)
from donut_hole.worker.sending import PUBLISH_RETRY, BrokerUnavailable, send_stored
from donut_hole.worker.webhook import CallbackNotAllowed, check_callback_url, notify_finished

log = logging.getLogger("donut_hole.enqueue")

MAX_DOCUMENTS = 100_000  # per call; larger sets go through an S3 prefix
UPLOAD_PREFIX = "uploads"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class EnqueueError(ValueError):
    """The request cannot be queued as given; the message says what to change."""


class BucketNotAllowed(EnqueueError):
    """The request names S3 buckets outside ``DONUT_HOLE_ALLOWED_BUCKETS`` (and the store's own bucket)."""

    def __init__(self, refused: Sequence[str], allowed: Iterable[str]) -> None:
        listed = ", ".join(sorted(allowed))
        super().__init__(f"bucket(s) not allowed: {', '.join(refused)}; allowed: {listed}")
        self.refused = list(refused)


class NotStored(EnqueueError):
    """The batch is stored and its other documents queued, but the object store did not take these files
    within the retry budget; their documents are ``failed`` as ``not uploaded: ...``."""

    def __init__(self, batch_id: str, names: list[str], error: BaseException) -> None:
        self.batch_id, self.names = batch_id, names
        super().__init__(
            f"{len(names)} file(s) of batch {batch_id} were not stored, the object store refused them "
            f"({error}): {', '.join(names)}; the batch holds the others. Enqueue these files again."
        )


# ------------------------------------------------------------------------------------------ entry points


def submit_uris(
    services: Services,
    *,
    uris: list[str],
    source: str,
    session: Session | None = None,
    callback_url: str | None = None,
    review_threshold: float | None = None,
    idempotency: repository.Idempotency | None = None,
) -> str:
    """Queue the scans at ``uris`` (``s3://bucket/key`` or keys of the configured store) as one batch.

    ``callback_url`` (every ``submit_*`` takes one): posted to once the batch is finished
    (:mod:`.webhook`); refused with :class:`EnqueueError` outside ``DONUT_HOLE_CALLBACK_ALLOWED_URLS``.
    ``review_threshold`` (every ``submit_*`` too): the batch's own review threshold (None: the setting's).
    ``idempotency`` (the API's ``Idempotency-Key``) is stored with the batch: a batch already recorded
    under it makes the commit fail with IntegrityError, and nothing is sent.
    """
    _check_callback(services.settings, callback_url)
    batch_id, _ = _submit(
        services,
        _resolve_all(services, uris),
        source=source,
        session=session,
        callback_url=callback_url,
        review_threshold=review_threshold,
        idempotency=idempotency,
    )
    return batch_id


def submit_prefix(
    services: Services,
    *,
    prefix_uri: str,
    session: Session | None = None,
    callback_url: str | None = None,
    review_threshold: float | None = None,
    idempotency: repository.Idempotency | None = None,
) -> str:
    """Queue every image under ``prefix_uri``; a task lists it, so this returns at once.

    The batch starts ``expanding`` and becomes ``accepted`` once every document row exists (``failed``
    with a reason when the prefix cannot be listed or holds no image).
    """
    _check_callback(services.settings, callback_url)
    prefix = _resolve_prefix(services, prefix_uri)
    with _transaction(services, session) as writing:
        batch = repository.create_batch(
            writing,
            source=f"prefix {prefix}",
            uris=[],
            expanding=True,
            callback_url=callback_url,
            review_threshold=review_threshold,
            idempotency=idempotency,
        )
        batch_id = batch.id
    try:
        services.celery.send_task(
            TASK_EXPAND,
            args=[batch_id, prefix],
            queue=services.settings.queue,
            retry=True,
            retry_policy=PUBLISH_RETRY,
        )
    except Exception as exc:  # kombu raises several connection error types
        raise BrokerUnavailable(batch_id, exc) from exc
    log_event(log, "batch.submitted", batch_id=batch_id, prefix=prefix)
    return batch_id


def submit_upload(
    services: Services,
    *,
    data: bytes,
    filename: str,
    session: Session | None = None,
    callback_url: str | None = None,
    review_threshold: float | None = None,
    idempotency: repository.Idempotency | None = None,
) -> tuple[str, str]:
    """Store one uploaded scan and queue it (:func:`submit_uploads` of one file): (batch, document)."""
    batch_id, document_ids = submit_uploads(
        services,
        files=[(data, filename)],
        session=session,
        callback_url=callback_url,
        review_threshold=review_threshold,
        idempotency=idempotency,
    )
    return batch_id, document_ids[0]


def submit_uploads(
    services: Services,
    *,
    files: Sequence[tuple[bytes, str]],
    session: Session | None = None,
    callback_url: str | None = None,
    review_threshold: float | None = None,
    idempotency: repository.Idempotency | None = None,
) -> tuple[str, list[str]]:
    """Store uploaded scans under ``uploads/<uuid>/<safe, distinct file name>``, then queue them as one
    batch: (batch, one document per file, in order).

    The rows are committed before any object is written, so no object reaches the store without its row.
    When the store refuses a write, no document of the upload is queued: each is ``failed`` with the
    reason and the error is raised (the request is answered 503 and may be sent again whole).
    """
    settings = services.settings
    _check_callback(settings, callback_url)
    if not files:
        raise EnqueueError("no files to upload")
    if len(files) > MAX_DOCUMENTS:
        raise EnqueueError(f"{len(files)} files is more than {MAX_DOCUMENTS} in one upload")
    for data, filename in files:
        _check_upload(settings, data, filename)
    store = _store(services)
    folder = f"{UPLOAD_PREFIX}/{uuid.uuid4()}"
    keys = [f"{folder}/{name}" for name in _unique_names([Path(filename) for _, filename in files])]
    with _transaction(services, session) as writing:
        batch = repository.create_batch(
            writing,
            source="upload",
            uris=[_resolve(store, key) for key in keys],
            sha256s=[_sha256(data) for data, _ in files],
            callback_url=callback_url,
            review_threshold=review_threshold,
            idempotency=idempotency,
        )
        batch_id, document_ids = batch.id, [document.id for document in batch.documents]
    for key, (data, _), document_id in zip(keys, files, document_ids, strict=True):
        try:
            store.put(key, data)
        except StorageError as exc:
            _fail_unstored(services, dict.fromkeys(document_ids, exc))
            if idempotency is not None:  # nothing usable came of this try: a retry with its key starts afresh
                with session_scope(services.sessions) as writing:
                    repository.forget_idempotent(writing, batch_id=batch_id)
            log_event(
                log, "upload.unstored", level=logging.WARNING, batch_id=batch_id, document_id=document_id
            )
            raise
    send_stored(services, document_ids, batch_id=batch_id)
    log_event(log, "batch.submitted", batch_id=batch_id, documents=len(document_ids), source="upload")
    return batch_id, document_ids


def submit_files(
    services: Services,
    *,
    paths: Sequence[Path],
    source: str = "cli",
    callback_url: str | None = None,
    review_threshold: float | None = None,
) -> str:
    """Upload local scans to the store (``uploads/<uuid>/<name>``) and queue them as one batch.

    A file that cannot be taken (unreadable, empty, over ``max_image_bytes``) becomes a ``failed``
    document with the reason, and the others go on. The rows are committed before any object is
    written (no object in the store without its row); a write the store refuses fails its document.
    """
    _check_callback(services.settings, callback_url)
    if not paths:
        raise EnqueueError("no files to submit")
    if len(paths) > MAX_DOCUMENTS:
        raise EnqueueError(f"{len(paths)} files is more than {MAX_DOCUMENTS}; upload them and use a prefix")
    settings = services.settings
    store = _store(services)
    folder = f"{UPLOAD_PREFIX}/{uuid.uuid4()}"
    keys: list[str] = []
    uris: list[str] = []
    shas: list[str | None] = []
    errors: list[str | None] = []
    for path, name in zip(paths, _unique_names(paths), strict=True):
        key = f"{folder}/{name}"
        sha, error = None, None
        try:  # its size from stat first: nothing is read that the limit refuses (or a device)
            _check_file(settings, path)
            sha = _file_sha256(path)
        except OSError as exc:
            error = f"cannot read {path.name}: {exc.strerror or type(exc).__name__}"
        except EnqueueError as exc:
            error = str(exc)
        keys.append(key)
        uris.append(_resolve(store, key))
        shas.append(sha)
        errors.append(error)
    with session_scope(services.sessions) as writing:
        batch = repository.create_batch(
            writing,
            source=source,
            uris=uris,
            sha256s=shas,
            errors=errors,
            callback_url=callback_url,
            review_threshold=review_threshold,
        )
        batch_id = batch.id
        document_ids = [document.id for document in batch.documents]
    for document_id, error in zip(document_ids, errors, strict=True):
        if error is not None:
            log_event(log, "document.failed", level=logging.WARNING, batch_id=batch_id,
                      document_id=document_id, reason=error, kind="rejected")  # fmt: skip
    stored: list[str] = []
    refused: dict[str, Exception] = {}
    changed: dict[str, str] = {}
    deadline = time.monotonic() + settings.retry_budget_s  # for the whole upload: an outage is not per file
    for document_id, key, path, sha, error in zip(document_ids, keys, paths, shas, errors, strict=True):
        if error is not None:
            continue
        try:  # one file in memory at a time, at most max_image_bytes
            data = _read_checked(settings, path)
        except (OSError, EnqueueError) as exc:
            changed[document_id] = f"cannot read {path.name} again to upload it: {_reason(exc)}"
            continue
        if _sha256(data) != sha:
            changed[document_id] = f"{path.name} changed while it was submitted: submit it again"
            continue
        try:
            if refused:  # the store is down: do not wait out the budget again for every file
                raise next(iter(refused.values()))
            _put_retrying(store, key, data, deadline=deadline, backoff_max_s=settings.retry_backoff_max_s)
        except StorageError as exc:
            refused[document_id] = exc
            continue
        stored.append(document_id)
    if refused:
        _fail_unstored(services, refused)
    if changed:
        with session_scope(services.sessions) as session:
            for document_id, reason in changed.items():
                repository.mark_failed(session, document_id=document_id, error=reason)
    send_stored(services, stored, batch_id=batch_id)
    if callback_url and not stored:  # every file refused: the batch is already finished
        notify_finished(services, batch_ids=[batch_id])
    failed = len(paths) - len(stored)
    log_event(log, "batch.submitted", batch_id=batch_id, documents=len(stored), failed=failed, source=source)
    if refused:
        names = [
            path.name for path, document_id in zip(paths, document_ids, strict=True) if document_id in refused
        ]
        raise NotStored(batch_id, names, next(iter(refused.values())))
    return batch_id


def _put_retrying(
    store: ObjectStore, key: str, data: bytes, *, deadline: float, backoff_max_s: float
) -> None:
    """``store.put``, a transient refusal retried with growing pauses until ``deadline``."""
    pause = 0.5
    while True:
        try:
            store.put(key, data)
            return
        except TransientStorageError:
            if time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(2 * pause, backoff_max_s)


def _unique_names(paths: Sequence[Path]) -> list[str]:
    """A safe, distinct name in the batch's folder per file: ``a.jpg``, ``a-2.jpg``, ..."""
    names: list[str] = []
    taken: set[str] = set()
    for path in paths:
        name = safe_filename(path.name)
        stem, dot, suffix = name.rpartition(".")
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            candidate = f"{stem}-{n}.{suffix}" if dot else f"{name}-{n}"
        taken.add(candidate)
        names.append(candidate)
    return names


def _fail_unstored(services: Services, refused: dict[str, Exception]) -> None:
    """Documents whose object the store did not take: ``failed`` as ``not uploaded: ...`` (never queued
    again without their file: there is nothing in the store to read)."""
    with session_scope(services.sessions) as session:
        for document_id, exc in refused.items():
            reason = (
                f"{repository.NOT_UPLOADED}the object store did not take the scan ({exc}): "
                "enqueue its file again"
            )
            repository.mark_failed(session, document_id=document_id, error=reason)


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
    callback_url: str | None = None,
    review_threshold: float | None = None,
    idempotency: repository.Idempotency | None = None,
) -> tuple[str, list[str]]:
    with _transaction(services, session) as writing:
        batch = repository.create_batch(
            writing,
            source=source,
            uris=uris,
            sha256s=sha256s,
            callback_url=callback_url,
            review_threshold=review_threshold,
            idempotency=idempotency,
        )
        batch_id, document_ids = batch.id, [document.id for document in batch.documents]
    # Committed: a worker that takes a message is sure to find its rows.
    send_stored(services, document_ids, batch_id=batch_id)
    log_event(log, "batch.submitted", batch_id=batch_id, documents=len(document_ids), source=source)
    return batch_id, document_ids


# ------------------------------------------------------------------------------------------ validation


def safe_filename(filename: str) -> str:
    """A file name safe as the last part of a key: ``"../My Scan (1).JPG"`` → ``"My_Scan_1_.JPG"``."""
    name = PurePosixPath(str(filename).replace("\\", "/")).name
    name = _UNSAFE.sub("_", name).strip("._")[-120:]
    return name or "upload"


def _check_callback(settings: Settings, callback_url: str | None) -> None:
    if callback_url is None:
        return
    try:
        check_callback_url(settings, callback_url)
    except CallbackNotAllowed as exc:
        raise EnqueueError(str(exc)) from exc


def _check_file(settings: Settings, path: Path) -> int:
    """A local file's size from ``stat``, refused before anything is read: not a regular file (a directory,
    a device, a pipe), empty, or over ``max_image_bytes``."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise EnqueueError(f"{path.name} is not a regular file")
    if info.st_size == 0:
        raise EnqueueError(f"{path.name} is empty")
    if info.st_size > settings.max_image_bytes:
        raise EnqueueError(
            f"{path.name} is {info.st_size:,} bytes; the limit is {settings.max_image_bytes:,}"
        )
    return info.st_size


def _read_checked(settings: Settings, path: Path) -> bytes:
    """The file's bytes, read at most ``max_image_bytes`` + 1 of them (it may have grown since its check)."""
    _check_file(settings, path)
    with path.open("rb") as file:
        data = file.read(settings.max_image_bytes + 1)
    _check_upload(settings, data, path.name)
    return data


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _reason(exc: Exception) -> str:
    return (exc.strerror or type(exc).__name__) if isinstance(exc, OSError) else str(exc)


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
        return store.uri(check_key(uri))
    except InvalidLocation as exc:
        raise EnqueueError(f"malformed URI: {exc}") from exc


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
