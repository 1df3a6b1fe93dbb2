"""Object stores: the same behaviour from a local directory and from S3 (a moto server on loopback)."""

from __future__ import annotations

import socket
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from donut_hole.storage import (
    InvalidLocation,
    LocalStore,
    ObjectNotFound,
    ObjectStore,
    ObjectTooLarge,
    S3Store,
    StorageConfigError,
    StorageError,
    TransientStorageError,
    make_s3_client,
    open_store,
    parse_s3_uri,
)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.services)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
        return
    endpoint = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    yield S3Store(bucket, f"t-{uuid.uuid4().hex[:8]}", make_s3_client(endpoint_url=endpoint))


def test_put_then_get_by_uri_and_by_key(store: ObjectStore) -> None:
    uri = store.put("scans/a b.png", b"\x89PNG data")
    assert uri.startswith(("s3://", "file://"))
    assert store.get(uri, max_bytes=100) == b"\x89PNG data"
    assert store.get("scans/a b.png", max_bytes=100) == b"\x89PNG data"
    assert store.exists(uri) and store.exists("scans/a b.png")
    store.put("scans/a b.png", b"replaced")
    assert store.get(uri, max_bytes=100) == b"replaced"


def test_too_large_object_is_refused(store: ObjectStore) -> None:
    uri = store.put("big.bin", b"x" * 2048)
    assert store.get(uri, max_bytes=2048) == b"x" * 2048
    with pytest.raises(ObjectTooLarge, match=r"2048 bytes.*limit is 2047 bytes") as info:
        store.get(uri, max_bytes=2047)
    assert isinstance(info.value, StorageError) and info.value.size == 2048


def test_missing_object(store: ObjectStore) -> None:
    assert not store.exists("nope.png")
    with pytest.raises(ObjectNotFound, match=r"nope\.png does not exist"):
        store.get("nope.png", max_bytes=100)


def test_delete_removes_objects_by_uri_or_key_and_ignores_missing_ones(store: ObjectStore) -> None:
    kept = store.put("uploads/b/keep.png", b"keep")
    first = store.put("uploads/a/one.png", b"1")
    store.put("uploads/a/two.png", b"2")
    assert store.uri("uploads/a/one.png") == first
    store.delete([first, "uploads/a/two.png", "uploads/a/never-written.png"])
    assert not store.exists(first) and not store.exists("uploads/a/two.png")
    assert list(store.list("uploads/")) == [kept]
    store.delete([first])  # again: already gone is not an error
    store.delete([])
    assert store.get(kept, max_bytes=10) == b"keep"


def test_local_delete_removes_the_emptied_folders_only(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    one = store.put("uploads/x/one.png", b"1")
    two = store.put("uploads/y/two.png", b"2")
    store.delete([one])
    assert not (tmp_path / "store" / "uploads" / "x").exists()
    assert (tmp_path / "store" / "uploads" / "y").is_dir()
    store.delete([two])
    assert (tmp_path / "store").is_dir() and not (tmp_path / "store" / "uploads").exists()
    with pytest.raises(InvalidLocation):
        store.delete([(tmp_path / "elsewhere.png").as_uri()])


def test_list_is_a_string_prefix_in_key_order(store: ObjectStore) -> None:
    for key in ["b/2.png", "a/1.png", "a-x/3.png", "a/sub/4.png", "c.png"]:
        store.put(key, b"1")
    names = [uri.rsplit("/", 2) for uri in store.list("a")]
    assert [tuple(parts[-2:]) for parts in names] == [("a-x", "3.png"), ("a", "1.png"), ("sub", "4.png")]
    assert len(list(store.list())) == 5
    assert list(store.list("a/")) == [u for u in store.list("a") if "/a/" in u]
    assert list(store.list("zzz")) == []


@pytest.mark.parametrize("key", ["../escape.png", "a/../../escape.png", "/etc/passwd", "a/..", ""])
def test_keys_cannot_escape_the_root(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidLocation):
        store.put(key, b"x")
    with pytest.raises(InvalidLocation):
        store.get(key, max_bytes=10)


def test_presigned_get_reads_the_object(store: ObjectStore) -> None:
    uri = store.put("signed.png", b"signed bytes")
    url = store.presigned_get(uri, expires=60)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"signed bytes"


def test_local_store_refuses_files_outside_its_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "link").symlink_to(secret)
    for location in [secret.as_uri(), "link", "s3://bucket/key"]:
        with pytest.raises(InvalidLocation):
            store.get(location, max_bytes=100)


def test_local_put_is_atomic_and_lists_no_temporary_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    uri = store.put("a/b.png", b"123")
    assert uri == (tmp_path / "a" / "b.png").resolve().as_uri()
    (tmp_path / "a" / ".donut-hole-tmp-leftover").write_bytes(b"partial")
    assert list(store.list()) == [uri]


@pytest.mark.services
def test_s3_list_pages_past_1000_keys(s3_server: str, s3_bucket: str) -> None:
    client = make_s3_client(endpoint_url=s3_server)
    calls: list[dict[str, Any]] = []
    client.meta.events.register("before-call.s3.ListObjectsV2", lambda params, **_: calls.append(params))
    store = S3Store(s3_bucket, f"many-{uuid.uuid4().hex[:8]}", client)
    keys = [f"k/{i:05d}.png" for i in range(1001)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda key: store.put(key, b""), keys))

    listed = list(store.list("k/"))
    assert listed == [f"{store.url}/{key}" for key in keys]
    assert len(calls) == 2

    small_pages = S3Store(s3_bucket, store.prefix, client, page_size=300)
    calls.clear()
    assert list(small_pages.list("k/")) == listed
    assert len(calls) == 4


@pytest.mark.services
def test_s3_missing_bucket_is_not_found(s3_server: str) -> None:
    store = S3Store("no-such-bucket", "", make_s3_client(endpoint_url=s3_server))
    with pytest.raises(ObjectNotFound):
        store.get("a.png", max_bytes=10)
    assert not store.exists("a.png")


def test_unreachable_s3_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # credentials, so that the endpoint is what fails
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        client = make_s3_client(endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1, connect_timeout=1)
        client_store = S3Store("bucket", "", client)
        with pytest.raises(TransientStorageError, match="unreachable") as error:
            client_store.get("a.png", max_bytes=10)
        with pytest.raises(TransientStorageError, match="unreachable"):
            client_store.delete(["a.png"])
    # the reason is stored with the document and shown in answers: it names the object, not the endpoint
    assert str(error.value) == "S3 unreachable for s3://bucket/a.png (EndpointConnectionError); retry later"
    assert "127.0.0.1" not in str(error.value) and str(port) not in str(error.value)


@pytest.mark.services
def test_s3_store_reads_a_full_uri_in_another_bucket(s3_server: str, s3_bucket: str) -> None:
    client = make_s3_client(endpoint_url=s3_server)
    client.put_object(Bucket=s3_bucket, Key="elsewhere/x.png", Body=b"x")
    store = S3Store("other-bucket", "prefix", client)
    assert store.get(f"s3://{s3_bucket}/elsewhere/x.png", max_bytes=10) == b"x"
    with pytest.raises(InvalidLocation):
        store.get("file:///etc/passwd", max_bytes=10)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [("s3://scans/a.png", ("scans", "a.png")), ("s3://scans/2024/01/a b.png", ("scans", "2024/01/a b.png"))],
)
def test_parse_s3_uri(uri: str, expected: tuple[str, str]) -> None:
    assert parse_s3_uri(uri) == expected


@pytest.mark.parametrize(
    "uri", ["scans/a.png", "s3://", "s3:///a.png", "s3://scans", "s3://scans/", "http://x/y"]
)
def test_parse_s3_uri_rejects_bad_input(uri: str) -> None:
    with pytest.raises(InvalidLocation, match=r"s3|S3|bucket"):
        parse_s3_uri(uri)


def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    s3 = open_store("s3://scans/incoming/", endpoint_url="http://127.0.0.1:9")
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix, s3.url) == (
        "scans",
        "incoming",
        "s3://scans/incoming",
    )
    assert s3.client.meta.endpoint_url == "http://127.0.0.1:9"
    assert isinstance(open_store("s3://scans"), S3Store)
    for url in [str(tmp_path), tmp_path.as_uri()]:
        local = open_store(url)
        assert isinstance(local, LocalStore) and local.root == tmp_path.resolve()
    with pytest.raises(InvalidLocation, match="unsupported"):
        open_store("http://example.com/x")


@pytest.fixture
def no_aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """boto3's credential chain finds nothing here (and does not wait for an instance role)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)


@pytest.mark.services
def test_missing_credentials_are_a_config_error_retried_not_a_bad_document(
    s3_server: str, no_aws_credentials: None
) -> None:
    store = S3Store("bucket", "", make_s3_client(endpoint_url=s3_server, max_attempts=1))
    with pytest.raises(StorageConfigError, match="AWS_ACCESS_KEY_ID") as caught:
        store.get("a.png", max_bytes=10)
    assert isinstance(
        caught.value, TransientStorageError
    )  # the worker retries it, the document is not failed


def test_worker_refuses_to_start_without_credentials_for_an_s3_store(
    no_aws_credentials: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from donut_hole.cli import app

    monkeypatch.setenv("DONUT_HOLE_STORAGE_URL", "s3://scans/incoming")
    result = CliRunner().invoke(app, ["worker"])
    assert result.exit_code == 2
    assert "no AWS credentials" in result.output and "s3://scans/incoming" in result.output
