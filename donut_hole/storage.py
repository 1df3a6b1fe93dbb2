"""Object store for scans: S3 (or MinIO, moto) through boto3, and a local directory with the same interface.

>>> store = open_store("s3://scans/incoming", endpoint_url="http://127.0.0.1:9000")  # doctest: +SKIP
>>> uri = store.put("a.png", data)  # "s3://scans/incoming/a.png"                  # doctest: +SKIP
>>> store.get(uri, max_bytes=25 * 1024 * 1024)                                      # doctest: +SKIP

Keys are relative to the store's root (a directory, or ``bucket/prefix``); methods that read also take a full
URI (``s3://bucket/key``, ``file:///abs/path``). Errors are typed so that callers can tell a document that
can never be read (:class:`ObjectNotFound`, :class:`ObjectTooLarge`, :class:`InvalidLocation`) from a
hiccup worth retrying (:class:`TransientStorageError`).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ResponseStreamingError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

S3_PAGE_SIZE = 1000
S3_DELETE_PAGE = 1000  # keys per DeleteObjects call (the most S3 takes)
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling"}
_TMP_PREFIX = ".donut-hole-tmp-"


log = logging.getLogger("donut_hole.storage")


class StorageError(Exception):
    """An object cannot be stored or read; the message says which and why."""


class ObjectNotFound(StorageError):
    def __init__(self, uri: str) -> None:
        super().__init__(f"object {uri} does not exist")
        self.uri = uri


class ObjectTooLarge(StorageError):
    def __init__(self, uri: str, *, size: int | None, max_bytes: int) -> None:
        got = f"{size} bytes" if size is not None else f"more than {max_bytes} bytes"
        super().__init__(f"object {uri} is too large: {got}, the limit is {max_bytes} bytes")
        self.uri, self.size, self.max_bytes = uri, size, max_bytes


class InvalidLocation(StorageError, ValueError):
    """A malformed URI, a key that escapes the store's root, or a URI this store cannot read."""


class TransientStorageError(StorageError):
    """A network or server failure that may pass; retry later."""


class StorageConfigError(TransientStorageError):
    """The store cannot be used as configured (no S3 credentials): not the document's fault, so documents
    are retried rather than failed; ``donut-hole worker`` refuses to start in this state."""


CREDENTIALS_HELP = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or give the process an instance / "
    "service-account role"
)


def s3_credentials_missing() -> bool:
    """True when boto3's credential chain (environment, profile, role) finds nothing."""
    return boto3.session.Session().get_credentials() is None


def parse_s3_uri(uri: str, *, require_key: bool = True) -> tuple[str, str]:
    """``"s3://scans/2024/a.png"`` → ``("scans", "2024/a.png")``; ``InvalidLocation`` on anything else.

    With ``require_key=False`` a bare bucket (``"s3://scans"``) gives ``("scans", "")``.
    """
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise InvalidLocation(f"not an S3 URI (expected s3://bucket/key): {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not _BUCKET.match(bucket):
        raise InvalidLocation(f"invalid bucket name {bucket!r} in {uri!r}")
    if require_key and not key:
        raise InvalidLocation(f"S3 URI has no object key: {uri!r}")
    return bucket, key


def check_key(key: str) -> str:
    """A store key as given, or ``InvalidLocation`` when it is empty, absolute or climbs out with ``..``."""
    if not key or "\x00" in key:
        raise InvalidLocation(f"invalid object key {key!r}")
    if key.startswith(("/", "\\")):
        raise InvalidLocation(f"object key must be relative, got {key!r}")
    if ".." in re.split(r"[/\\]", key):
        raise InvalidLocation(f"object key must not contain '..': {key!r}")
    return key


class ObjectStore(ABC):
    """Where scans live. ``uri_or_key`` arguments take a key relative to the store or a full URI."""

    url: str

    @abstractmethod
    def put(self, key: str, data: bytes) -> str:
        """Write ``data`` under ``key`` (replacing an existing object) and return its URI."""

    @abstractmethod
    def get(self, uri_or_key: str, *, max_bytes: int) -> bytes:
        """The object's bytes; ``ObjectTooLarge`` without reading it all when it exceeds ``max_bytes``."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """URIs of the objects whose key starts with ``prefix`` (a string prefix, as in S3), in key order."""

    @abstractmethod
    def exists(self, uri_or_key: str) -> bool: ...

    @abstractmethod
    def uri(self, key: str) -> str:
        """The URI that ``key`` (relative to the store) has: what :meth:`put` returns for it."""

    @abstractmethod
    def delete(self, uris_or_keys: Sequence[str]) -> None:
        """Remove these objects; one already gone is not an error. Raises on the first object it could not
        remove (``StorageError``), so a caller can try again: what was removed stays removed."""

    @abstractmethod
    def presigned_get(self, uri_or_key: str, expires: int = 3600) -> str:
        """A URL that reads the object without credentials for ``expires`` seconds (local: a file:// URL)."""


class LocalStore(ObjectStore):
    """Objects as files under ``root``; writes are atomic (temporary file, then rename)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def path_for(self, uri_or_key: str) -> Path:
        """The file behind a key or ``file://`` URI, which must lie under the root."""
        if uri_or_key.startswith("file:"):
            parsed = urlparse(uri_or_key)
            if parsed.netloc not in ("", "localhost"):
                raise InvalidLocation(f"file URI on another host: {uri_or_key!r}")
            path = Path(url2pathname(parsed.path)).resolve()
        elif "://" in uri_or_key:
            raise InvalidLocation(f"a local store cannot read {uri_or_key!r}")
        else:
            path = (self.root / check_key(uri_or_key)).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise InvalidLocation(f"{uri_or_key!r} lies outside the store root {self.root}")
        return path

    def put(self, key: str, data: bytes) -> str:
        path = self.path_for(check_key(key))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise _os_error(exc, path.as_uri()) from exc
        return path.as_uri()

    def get(self, uri_or_key: str, *, max_bytes: int) -> bytes:
        path = self.path_for(uri_or_key)
        uri = path.as_uri()
        try:
            with path.open("rb") as file:
                size = os.fstat(file.fileno()).st_size
                if size > max_bytes:
                    raise ObjectTooLarge(uri, size=size, max_bytes=max_bytes)
                data = file.read(max_bytes + 1)
        except OSError as exc:
            raise _os_error(exc, uri) from exc
        if len(data) > max_bytes:  # grew since fstat
            raise ObjectTooLarge(uri, size=None, max_bytes=max_bytes)
        return data

    def list(self, prefix: str = "") -> Iterator[str]:
        if prefix.startswith("file:"):
            prefix = self.path_for(prefix).relative_to(self.root).as_posix() + (
                "/" if prefix.endswith("/") else ""
            )
        elif prefix:
            check_key(prefix)
        directory = self.root / prefix.rpartition("/")[0]
        if not directory.resolve().is_relative_to(self.root):
            raise InvalidLocation(f"prefix {prefix!r} lies outside the store root {self.root}")
        keys = []
        for dirpath, _dirnames, filenames in os.walk(directory):
            for name in filenames:
                if name.startswith(_TMP_PREFIX):
                    continue
                key = (Path(dirpath) / name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        for key in sorted(keys):
            yield (self.root / key).as_uri()

    def exists(self, uri_or_key: str) -> bool:
        return self.path_for(uri_or_key).is_file()

    def presigned_get(self, uri_or_key: str, expires: int = 3600) -> str:
        return self.path_for(uri_or_key).as_uri()

    def uri(self, key: str) -> str:
        return self.path_for(check_key(key)).as_uri()

    def delete(self, uris_or_keys: Sequence[str]) -> None:
        for uri_or_key in uris_or_keys:
            path = self.path_for(uri_or_key)
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise _os_error(exc, path.as_uri()) from exc
            folder = path.parent  # an upload's own folder, left empty
            while folder != self.root and folder.is_relative_to(self.root):
                try:
                    folder.rmdir()
                except OSError:  # not empty (or not ours to remove): leave it
                    break
                folder = folder.parent


class S3Store(ObjectStore):
    """Objects in ``bucket`` under ``prefix``; full ``s3://`` URIs may name any bucket the client can read."""

    def __init__(self, bucket: str, prefix: str, client: Any, *, page_size: int = S3_PAGE_SIZE) -> None:
        parse_s3_uri(f"s3://{bucket}", require_key=False)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_key(self.prefix)
        self.client = client
        self.page_size = page_size
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"

    def locate(self, uri_or_key: str, *, allow_empty: bool = False) -> tuple[str, str]:
        """``(bucket, key)`` of a key relative to the store or of an ``s3://`` URI."""
        if uri_or_key.startswith("s3://"):
            return parse_s3_uri(uri_or_key, require_key=not allow_empty)
        if "://" in uri_or_key:
            raise InvalidLocation(f"an S3 store cannot read {uri_or_key!r}")
        if allow_empty and not uri_or_key:
            return self.bucket, f"{self.prefix}/" if self.prefix else ""
        key = check_key(uri_or_key)
        return self.bucket, f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> str:
        bucket, full_key = self.locate(check_key(key))
        uri = f"s3://{bucket}/{full_key}"
        with _s3_errors(uri):
            self.client.put_object(Bucket=bucket, Key=full_key, Body=data)
        return uri

    def get(self, uri_or_key: str, *, max_bytes: int) -> bytes:
        bucket, key = self.locate(uri_or_key)
        uri = f"s3://{bucket}/{key}"
        with _s3_errors(uri):
            response = self.client.get_object(Bucket=bucket, Key=key)
            body = response["Body"]
            try:
                size = response.get("ContentLength")
                if size is not None and size > max_bytes:
                    raise ObjectTooLarge(uri, size=size, max_bytes=max_bytes)
                data = body.read(max_bytes + 1)
            finally:
                body.close()
        if len(data) > max_bytes:
            raise ObjectTooLarge(uri, size=None, max_bytes=max_bytes)
        return data

    def list(self, prefix: str = "") -> Iterator[str]:
        bucket, key_prefix = self.locate(prefix, allow_empty=True)
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=bucket, Prefix=key_prefix, PaginationConfig={"PageSize": self.page_size}
        )
        with _s3_errors(f"s3://{bucket}/{key_prefix}"):
            for page in pages:
                for item in page.get("Contents", []):
                    yield f"s3://{bucket}/{item['Key']}"

    def exists(self, uri_or_key: str) -> bool:
        bucket, key = self.locate(uri_or_key)
        try:
            with _s3_errors(f"s3://{bucket}/{key}"):
                self.client.head_object(Bucket=bucket, Key=key)
        except ObjectNotFound:
            return False
        return True

    def uri(self, key: str) -> str:
        bucket, full_key = self.locate(check_key(key))
        return f"s3://{bucket}/{full_key}"

    def delete(self, uris_or_keys: Sequence[str]) -> None:
        by_bucket: dict[str, list[str]] = {}
        for uri_or_key in uris_or_keys:
            bucket, key = self.locate(uri_or_key)
            by_bucket.setdefault(bucket, []).append(key)
        for bucket, keys in by_bucket.items():
            for start in range(0, len(keys), S3_DELETE_PAGE):
                chunk = keys[start : start + S3_DELETE_PAGE]
                with _s3_errors(f"s3://{bucket}/{chunk[0]}"):
                    answer = self.client.delete_objects(
                        Bucket=bucket, Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True}
                    )
                for error in answer.get("Errors", []):
                    if error.get("Code") not in _NOT_FOUND_CODES:
                        uri = f"s3://{bucket}/{error.get('Key', '')}"
                        reason = f"{error.get('Code')} ({error.get('Message')})"
                        raise StorageError(f"S3 refused to delete {uri}: {reason}")

    def presigned_get(self, uri_or_key: str, expires: int = 3600) -> str:
        bucket, key = self.locate(uri_or_key)
        url: str = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires
        )
        return url


def make_s3_client(
    *,
    endpoint_url: str | None = None,
    region: str = "us-east-1",
    max_attempts: int = 5,
    connect_timeout: float = 5.0,
    read_timeout: float = 30.0,
) -> Any:
    """A boto3 S3 client: path-style addressing (MinIO, moto), standard retries, bounded timeouts.

    Credentials come from the usual boto3 chain (environment, profile, instance role).
    """
    config = Config(
        region_name=region,
        s3={"addressing_style": "path"},
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, config=config)


def open_store(url: str, *, endpoint_url: str | None = None, region: str = "us-east-1") -> ObjectStore:
    """``s3://bucket[/prefix]`` → :class:`S3Store`; a directory or ``file://`` URL → :class:`LocalStore`."""
    if url.startswith("s3://"):
        bucket, prefix = parse_s3_uri(url, require_key=False)
        return S3Store(bucket, prefix, make_s3_client(endpoint_url=endpoint_url, region=region))
    if url.startswith("file://"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise InvalidLocation(f"file URL on another host: {url!r}")
        return LocalStore(Path(url2pathname(parsed.path)))
    if "://" in url:
        raise InvalidLocation(f"unsupported store URL {url!r}: use s3://bucket/prefix or a directory")
    return LocalStore(Path(url))


@contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    """Translate botocore exceptions raised in the block into this module's typed errors."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in _NOT_FOUND_CODES or status == "404":
            raise ObjectNotFound(uri) from exc
        if code in _TRANSIENT_CODES or status.startswith("5"):
            raise TransientStorageError(f"S3 error {code or status} on {uri}; retry later") from exc
        message = error.get("Message") or code or status
        raise StorageError(f"S3 refused {uri}: {code or status} ({message})") from exc
    except (BotoConnectionError, HTTPClientError, ResponseStreamingError, IncompleteReadError) as exc:
        # botocore's text names the endpoint (host and port): logged here, kept out of the stored reason
        log.warning("S3 unreachable for %s: %s", uri, exc)
        raise TransientStorageError(f"S3 unreachable for {uri} ({type(exc).__name__}); retry later") from exc
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise StorageConfigError(
            f"no usable AWS credentials to read {uri} ({exc}): {CREDENTIALS_HELP}"
        ) from exc
    except BotoCoreError as exc:
        log.warning("S3 client error for %s: %s", uri, exc)
        raise StorageError(f"S3 client error for {uri} ({type(exc).__name__})") from exc


def _os_error(exc: OSError, uri: str) -> StorageError:
    if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError):
        return ObjectNotFound(uri)
    if isinstance(exc, PermissionError):
        return StorageError(f"permission denied on {uri}")
    return TransientStorageError(f"I/O error on {uri}: {exc.strerror or exc}")
