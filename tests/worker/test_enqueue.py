"""Submitting work: validation errors before anything is written; rows committed before messages are sent."""

from __future__ import annotations

import re
import socket
import uuid
from pathlib import Path

import pytest
import redis
from worker_helpers import database, purge

from donut_hole.db import migrate, repository, session_scope
from donut_hole.services import Services
from donut_hole.settings import Settings
from donut_hole.worker.enqueue import (
    BucketNotAllowed,
    EnqueueError,
    submit_files,
    submit_prefix,
    submit_upload,
    submit_uris,
)
from donut_hole.worker.recovery import recover_stalled, resend_queued
from donut_hole.worker.sending import BrokerUnavailable


@pytest.fixture
def local(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, max_image_bytes=2048)


@pytest.fixture
def s3(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, storage_url="s3://scans/in", allowed_buckets=["scans", "archive"])


@pytest.mark.parametrize(
    ("uris", "message"),
    [
        ([], "no documents"),
        ("s3://scans/a.jpg", "must be a list"),
        (["s3://scans/in/a.jpg", "a.jpg"], "duplicate document: 'a.jpg' and 's3://scans/in/a.jpg'"),
        (["s3://scans/a.jpg", "s3://scans/a.jpg"], "duplicate document"),
        (["s3://"], "malformed URI: invalid bucket name"),
        (["s3://scans"], "malformed URI: S3 URI has no object key"),
        (["s3://scans/day1/"], "names a prefix, not an object"),
        (["s3://Bad Bucket/a.jpg"], "invalid bucket name"),
        (["s3://other/a.jpg"], "bucket(s) not allowed: other; allowed: archive, scans"),
        (["http://example.com/a.jpg"], "unsupported URI"),
        (["file:///tmp/a.jpg"], "is a local file"),
        (["../secrets.jpg"], "must not contain '..'"),
        ([" a.jpg"], "surrounding whitespace"),
        ([""], "empty"),
        ([None], "not a string"),
    ],
)
def test_submit_uris_rejects_bad_input_with_a_readable_message(
    s3: Settings, uris: object, message: str
) -> None:
    with Services(s3) as services, pytest.raises(EnqueueError, match=re.escape(message)):
        submit_uris(services, uris=uris, source="test")  # type: ignore[arg-type]


def test_validation_knows_which_store_can_read_what(local: Settings, s3: Settings) -> None:
    with Services(local) as on_disk, Services(s3) as in_s3:
        with pytest.raises(EnqueueError, match="the object store is the local directory"):
            submit_uris(on_disk, uris=["s3://scans/a.jpg"], source="test")
        with pytest.raises(EnqueueError, match="lies outside the store root"):
            submit_uris(on_disk, uris=["file:///etc/passwd"], source="test")
        with pytest.raises(EnqueueError, match="the prefix is empty"):
            submit_prefix(in_s3, prefix_uri="")
        with pytest.raises(EnqueueError, match="unsupported prefix"):
            submit_prefix(in_s3, prefix_uri="ftp://scans/day1/")
        with pytest.raises(BucketNotAllowed, match="not allowed: elsewhere; allowed: archive, scans"):
            submit_prefix(in_s3, prefix_uri="s3://elsewhere/day1/")

        with pytest.raises(EnqueueError, match="is empty"):
            submit_upload(on_disk, data=b"", filename="a.jpg")
        with pytest.raises(EnqueueError, match=r"a\.jpg is 4,096 bytes; the limit is 2,048"):
            submit_upload(on_disk, data=b"x" * 4096, filename="a.jpg")
    assert not (local.data_dir / "store").exists(), "nothing may be stored for a rejected upload"
    # The bucket rule comes first, whatever the store: the same answer everywhere (the API's 403).
    only_scans = local.model_copy(update={"allowed_buckets": ["scans"]})
    with Services(only_scans) as services, pytest.raises(BucketNotAllowed, match="not allowed: elsewhere"):
        submit_uris(services, uris=["s3://elsewhere/a.jpg"], source="test")


@pytest.mark.services
def test_rows_are_committed_before_messages_and_can_be_resent(local: Settings, redis_url: str) -> None:
    with socket.socket() as sock:  # a broker port where nothing listens
        sock.bind(("127.0.0.1", 0))
        down = local.model_copy(update={"broker_url": f"redis://127.0.0.1:{sock.getsockname()[1]}/0"})
    migrate.upgrade(down.database_url)
    (local.data_dir / "store").mkdir()

    with (
        Services(down) as services,
        pytest.raises(BrokerUnavailable, match="is stored but the broker is unreachable") as error,
    ):
        submit_uris(services, uris=["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"], source="test")

    batch_id = error.value.batch_id
    with database(down) as sessions, session_scope(sessions) as session:
        assert repository.batch_progress(session, batch_id=batch_id)["queued"] == 5
    up = local.model_copy(
        update={"broker_url": redis_url, "queue": f"test-{uuid.uuid4().hex[:10]}", "batch_size": 2}
    )
    with Services(up) as services:
        try:
            assert resend_queued(services, batch_id=batch_id) == 5
            assert redis.Redis.from_url(redis_url).llen(up.queue) == 3  # groups of 2, 2 and 1 document ids
        finally:
            purge(up)
        with pytest.raises(EnqueueError, match="does not exist"):
            resend_queued(services, batch_id=str(uuid.uuid4()))


@pytest.mark.services
def test_recover_stalled_sends_lost_documents_again_and_keeps_them_when_the_broker_is_down(
    local: Settings, redis_url: str
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        down = local.model_copy(update={"broker_url": f"redis://127.0.0.1:{sock.getsockname()[1]}/0"})
    migrate.upgrade(down.database_url)
    with database(down) as sessions:
        with session_scope(sessions) as session:
            batch = repository.create_batch(session, source="test", uris=["a.jpg", "b.jpg", "c.jpg"])
            ids = sorted(document.id for document in batch.documents)
            for document_id in ids[:2]:  # a worker claimed two of them, then vanished
                repository.mark_processing(session, document_id=document_id)

        with Services(down) as services, pytest.raises(BrokerUnavailable):
            recover_stalled(services, older_than_s=0)
        with session_scope(sessions) as session:  # rolled back: still 'processing'
            assert repository.batch_progress(session, batch_id=batch.id)["processing"] == 2

        up = down.model_copy(update={"broker_url": redis_url, "queue": f"test-{uuid.uuid4().hex[:10]}"})
        try:
            with Services(up) as services:
                assert recover_stalled(services) == 0  # younger than the hard time limit + 60 s
                assert recover_stalled(services, older_than_s=0) == 2
            assert redis.Redis.from_url(redis_url).llen(up.queue) == 1  # one group of the two ids
        finally:
            purge(up)
        with session_scope(sessions) as session:
            documents = [repository.get_document(session, document_id=i) for i in ids]
            assert [d.status.value for d in documents] == ["queued", "queued", "queued"]
            assert documents[0].error.startswith(
                "sent again: no worker finished it (processing for more than 0 s"
            )
            assert documents[0].attempts == 1 and documents[2].error is None


def test_a_folder_with_bad_files_fails_them_one_by_one_and_queues_the_rest(local: Settings) -> None:
    """D3: an empty and an oversized file become failed documents with their reason; the rest is queued,
    and every object in the store has its document row."""
    from donut_hole.storage import open_store

    migrate.upgrade(local.database_url)
    folder = local.data_dir / "scans"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"\x89PNG" + b"a" * 100)
    (folder / "empty.png").write_bytes(b"")
    (folder / "big.png").write_bytes(b"\x89PNG" + b"b" * 4000)  # over max_image_bytes = 2048
    (folder / "c.png").write_bytes(b"\x89PNG" + b"c" * 100)
    paths = sorted(folder.iterdir())

    with Services(local) as services:
        batch_id = submit_files(services, paths=paths)

    with database(local) as sessions, session_scope(sessions) as session:
        rows = {
            row["uri"].rsplit("/", 1)[-1]: row
            for row in repository.results_for_batch(session, batch_id=batch_id)
        }
    assert {name: row["status"] for name, row in rows.items()} == {
        "a.png": "queued", "big.png": "failed", "c.png": "queued", "empty.png": "failed",
    }  # fmt: skip
    assert rows["empty.png"]["error"] == "empty.png is empty"
    assert rows["big.png"]["error"] == "big.png is 4,004 bytes; the limit is 2,048"
    assert local.data_dir.as_posix() not in rows["big.png"]["error"]
    stored = sorted(open_store(local.storage_url).list(""))
    queued = sorted(row["uri"] for row in rows.values() if row["status"] == "queued")
    assert stored == queued, "an object in the store without its row, or a row without its object"


def test_local_files_are_sized_from_stat_before_anything_is_read(local: Settings) -> None:
    """A file over the limit is refused by its size alone (a 256 MB sparse file: nothing near that is
    read), a device by its type; the good file is uploaded."""
    import tracemalloc

    migrate.upgrade(local.database_url)
    folder = local.data_dir / "scans"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"\x89PNG" + b"a" * 100)
    with (folder / "huge.jpg").open("wb") as huge:
        huge.truncate(256 << 20)
    tracemalloc.start()
    try:
        with Services(local) as services:
            batch_id = submit_files(
                services, paths=[folder / "a.png", folder / "huge.jpg", Path("/dev/null")]
            )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"{peak:,} bytes allocated"
    with database(local) as sessions, session_scope(sessions) as session:
        rows = {
            row["uri"].rsplit("/", 1)[-1]: row
            for row in repository.results_for_batch(session, batch_id=batch_id)
        }
    assert rows["a.png"]["status"] == "queued"
    assert rows["huge.jpg"]["error"] == "huge.jpg is 268,435,456 bytes; the limit is 2,048"
    assert rows["null"]["error"] == "null is not a regular file"
