"""The completion webhook: the allow-list, the signature, delivery state, and real workers posting to a
real HTTP receiver on loopback (PostgreSQL, Redis, moto S3)."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import API_KEY, CALLBACK_SECRET
from fastapi.testclient import TestClient
from multipage import broken, pdf_of
from receiver import RawReceiver, Receiver, signature_ok
from sqlalchemy import update
from typer.testing import CliRunner
from worker_helpers import Worker, database, purge, settings_env, wait_for_batch

from donut_hole.api import create_app
from donut_hole.cli import app
from donut_hole.db import Batch, migrate, repository, session_scope
from donut_hole.db import callbacks as callback_rows
from donut_hole.db.models import utcnow
from donut_hole.services import Services
from donut_hole.settings import Settings, get_settings
from donut_hole.signing import sign, verify
from donut_hole.storage import open_store
from donut_hole.worker.webhook import check_callback_url, deliver, post, url_allowed


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def raw_receiver() -> Iterator[RawReceiver]:
    server = RawReceiver()
    yield server
    server.close()


# ------------------------------------------------------------------------------------------- pure rules


def test_only_urls_under_the_allow_list_are_called() -> None:
    allowed = ["https://hooks.example.com/donut", "ops.example.org", "http://127.0.0.1:8080/"]
    assert url_allowed("https://hooks.example.com/donut", allowed)
    assert url_allowed("https://hooks.example.com/donut/batch?x=1", allowed)
    assert url_allowed("http://ops.example.org:9000/any", allowed)  # a bare host: any port, any path
    assert url_allowed("http://127.0.0.1:8080/hook", allowed)
    refused = [
        "https://hooks.example.com/donutx",  # a prefix is matched on whole path segments
        "https://hooks.example.com/other",
        "http://hooks.example.com/donut",  # another scheme
        "https://hooks.example.com:444/donut",  # another port
        "https://hooks.example.com.evil.io/donut",
        "https://user:pw@hooks.example.com/donut",  # credentials
        "https://hooks.example.com/donut/../admin",
        "https://hooks.example.com/donut/%2e%2e/admin",
        "http://127.0.0.1:8081/hook",
        "ftp://ops.example.org/x",
        "https://hooks.example.com/donut\n",
        "not a url",
    ]
    assert [url for url in refused if url_allowed(url, allowed)] == []


def test_a_refused_callback_url_says_why_without_echoing_it(tmp_path: Path) -> None:
    on = Settings(data_dir=tmp_path, callback_secret="s", callback_allowed_urls=["hooks.example.com"])
    assert check_callback_url(on, "https://hooks.example.com/x") == "https://hooks.example.com/x"
    with pytest.raises(ValueError) as refused:
        check_callback_url(on, "https://internal.corp.local/admin")
    assert "DONUT_HOLE_CALLBACK_ALLOWED_URLS" in str(refused.value)
    assert "internal" not in str(refused.value) and "hooks.example" not in str(refused.value)
    with pytest.raises(ValueError, match="DONUT_HOLE_CALLBACK_SECRET is not set"):
        check_callback_url(Settings(data_dir=tmp_path, callback_allowed_urls=["a.b"]), "https://a.b/")
    with pytest.raises(ValueError, match="DONUT_HOLE_CALLBACK_ALLOWED_URLS is empty"):
        check_callback_url(Settings(data_dir=tmp_path, callback_secret="s"), "https://a.b/")


def test_the_signature_is_hmac_sha256_over_the_timestamp_and_the_raw_body() -> None:
    body = b'{"batch_id":"b1"}'
    signature = sign(b"key", timestamp=1_700_000_000, body=body)
    assert (
        signature == "sha256=" + __import__("hmac").new(b"key", b"1700000000." + body, "sha256").hexdigest()
    )
    assert verify(b"key", timestamp="1700000000", body=body, signature=signature, now=1_700_000_100)
    assert not verify(
        b"key", timestamp="1700000000", body=body + b" ", signature=signature, now=1_700_000_000
    )
    assert not verify(b"other", timestamp="1700000000", body=body, signature=signature, now=1_700_000_000)
    assert not verify(b"key", timestamp="1700000000", body=body, signature=signature, now=1_700_001_000)


# ------------------------------------------------------------------------ delivery state, in this process


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    settings = Settings(
        data_dir=tmp_path,
        callback_secret=CALLBACK_SECRET,
        callback_allowed_urls=["127.0.0.1"],
        callback_max_attempts=3,
        callback_timeout_s=2,
    )
    migrate.upgrade(settings.database_url)
    with Services(settings) as own:
        yield own


def _finished_batch(services: Services, url: str) -> str:
    with session_scope(services.sessions) as session:
        batch = repository.create_batch(session, source="test", uris=["a.png"], callback_url=url)
        repository.mark_failed(session, document_id=batch.documents[0].id, error="corrupt image")
        assert callback_rows.mark_finished(session) == [batch.id]
        assert callback_rows.mark_finished(session) == []  # one caller wins
        return batch.id


def _state(services: Services, batch_id: str) -> tuple[str | None, int, str | None]:
    with session_scope(services.sessions) as session:
        batch = repository.get_batch(session, batch_id=batch_id)
        return batch.callback_status, batch.callback_attempts, batch.callback_error


def _due_now(services: Services, batch_id: str) -> None:
    """The backoff has passed (the test does not wait for it)."""
    with session_scope(services.sessions) as session:
        session.execute(update(Batch).where(Batch.id == batch_id).values(callback_next_at=utcnow()))


def test_a_failed_try_is_retried_later_and_a_success_is_never_sent_again(
    services: Services, receiver: Receiver
) -> None:
    receiver.answers = [503]
    batch_id = _finished_batch(services, f"{receiver.url}/retry")

    assert deliver(services, batch_id=batch_id) == 2.0  # the next try in 2 ** 1 s
    assert _state(services, batch_id) == ("due", 1, "HTTP 503")
    assert deliver(services, batch_id=batch_id) is None  # a copy that comes early does nothing
    _due_now(services, batch_id)
    assert deliver(services, batch_id=batch_id) is None  # delivered
    assert _state(services, batch_id) == ("delivered", 2, None)
    _due_now(services, batch_id)
    assert deliver(services, batch_id=batch_id) is None
    posts = receiver.posts("/retry")
    assert [p.answered for p in posts] == [503, 200]
    assert all(signature_ok(p, CALLBACK_SECRET.encode()) for p in posts)
    body = json.loads(posts[-1].body)
    assert body == {
        "attempt": 2,
        "batch_id": batch_id,
        "counts": {"done": 0, "failed": 1, "needs_review": 0, "processing": 0, "queued": 0, "total": 1},
        "event": "batch.finished",
        "results_url": f"/v1/batches/{batch_id}/results",
        "status": "finished",
    }


def test_a_receiver_that_keeps_failing_is_given_up_after_the_last_attempt(
    services: Services, receiver: Receiver
) -> None:
    receiver.answers = [500, 500, 500, 500]
    batch_id = _finished_batch(services, f"{receiver.url}/down")
    for _ in range(3):
        _due_now(services, batch_id)
        deliver(services, batch_id=batch_id)
    assert _state(services, batch_id) == ("failed", 3, "HTTP 500")
    unreachable = _finished_batch(services, "http://127.0.0.1:1/nobody")  # nothing listens on port 1
    deliver(services, batch_id=unreachable)
    status, attempts, error = _state(services, unreachable)
    assert (status, attempts) == ("due", 1) and error.startswith("no answer") and "127.0.0.1" not in error


def test_a_try_under_way_holds_a_lease_so_copies_do_not_post_twice(services: Services) -> None:
    batch_id = _finished_batch(services, "http://127.0.0.1:1/x")
    with session_scope(services.sessions) as session:
        assert callback_rows.claim(session, batch_id=batch_id, lease_s=60, max_attempts=3) is not None
        assert callback_rows.claim(session, batch_id=batch_id, lease_s=60, max_attempts=3) is None
        later = utcnow() + timedelta(seconds=120)
        assert callback_rows.overdue(session, before=later) == [batch_id]  # a lost try: the watchdog
        assert callback_rows.overdue(session, before=utcnow()) == []


def _post_within(url: str, *, timeout_s: float, limit_s: float) -> tuple[str | None, float]:
    """``post``'s answer and its duration; fails the test (without hanging it) past ``limit_s``."""
    outcome: list[str | None] = []
    start = time.monotonic()
    thread = threading.Thread(
        target=lambda: outcome.append(post(url, body=b"{}", headers={}, timeout_s=timeout_s)), daemon=True
    )
    thread.start()
    thread.join(limit_s)
    assert outcome, f"post to {url} still running after {limit_s} s"
    return outcome[0], time.monotonic() - start


def test_one_deadline_bounds_the_whole_post_not_each_read(raw_receiver: RawReceiver) -> None:
    # A byte every 0.5 s never lets a per-read timeout of 2 s fire; the deadline ends it at 2 s all told.
    for path in ("/trickle", "/hang"):
        error, took = _post_within(f"{raw_receiver.url}{path}", timeout_s=2, limit_s=10)
        assert error == "no complete answer within 2 s", (path, error)
        assert 1.9 <= took < 3.0, (path, took)
    deadline = time.monotonic() + 5
    while any(e.ended is None for e in raw_receiver.exchanges) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(e.ended is not None for e in raw_receiver.exchanges)  # the connections were let go


def test_only_a_complete_2xx_answer_counts_as_delivered(raw_receiver: RawReceiver) -> None:
    assert _post_within(f"{raw_receiver.url}/ok", timeout_s=5, limit_s=10)[0] is None
    half, _ = _post_within(f"{raw_receiver.url}/half", timeout_s=5, limit_s=10)
    assert half == "no complete answer: the connection closed before the end of the answer"
    moved, _ = _post_within(f"{raw_receiver.url}/redirect", timeout_s=5, limit_s=10)
    assert moved == "HTTP 307 (redirects are not followed)"
    assert len(raw_receiver.of("/redirect")) == 1  # not followed


def test_a_try_is_counted_before_it_is_made_and_a_lost_last_try_ends_failed(services: Services) -> None:
    batch_id = _finished_batch(services, "http://127.0.0.1:1/x")
    with session_scope(services.sessions) as session:
        assert callback_rows.claim(session, batch_id=batch_id, lease_s=60, max_attempts=2) is not None
    assert _state(services, batch_id) == ("due", 1, None)  # committed before any byte is sent
    _due_now(services, batch_id)  # the worker was lost mid-try: its lease ran out
    with session_scope(services.sessions) as session:
        assert callback_rows.claim(session, batch_id=batch_id, lease_s=60, max_attempts=2) is not None
    _due_now(services, batch_id)  # lost again, on the last try
    with session_scope(services.sessions) as session:
        assert callback_rows.claim(session, batch_id=batch_id, lease_s=60, max_attempts=2) is None
    assert _state(services, batch_id) == ("failed", 2, callback_rows.LOST_TRY)


# ------------------------------------------------------------------------------- real workers, real HTTP


pytest_services = pytest.mark.services


@pytest_services
def test_a_batch_enqueued_with_the_cli_posts_one_signed_callback_when_finished(
    pipeline_settings: Settings,
    shared_worker: Worker,
    scan_dir: Path,
    tmp_path: Path,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in settings_env(pipeline_settings).items():
        if name.startswith("DONUT_HOLE_"):
            monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    scans = sorted(scan_dir.glob("*.jpg"))
    (tmp_path / "manifest.pdf").write_bytes(pdf_of(scans[:3]))
    (tmp_path / "torn.pdf").write_bytes(broken(pdf_of(scans[:1])))
    receiver.answers = [503]  # the first try fails: retried after the backoff
    try:
        enqueued = CliRunner().invoke(
            app, ["enqueue", str(tmp_path), "--callback-url", f"{receiver.url}/hooks/cli"]
        )
        refused = CliRunner().invoke(app, ["enqueue", str(tmp_path), "--callback-url", "https://evil.io/x"])
    finally:
        get_settings.cache_clear()
    assert enqueued.exit_code == 0, enqueued.output
    assert refused.exit_code == 2 and "DONUT_HOLE_CALLBACK_ALLOWED_URLS" in refused.output
    batch_id = enqueued.stdout.strip().splitlines()[0]

    counts = wait_for_batch(pipeline_settings, batch_id, worker=shared_worker)
    posts = receiver.wait_for("/hooks/cli")

    assert counts["done"] == 3 and counts["failed"] == 1
    assert [p.answered for p in posts] == [503, 200]
    assert all(signature_ok(p, CALLBACK_SECRET.encode()) for p in posts)
    body = json.loads(posts[-1].body)
    assert body["batch_id"] == batch_id and posts[-1].headers["x-donuthole-batch"] == batch_id
    assert body["counts"] == {
        "queued": 0,
        "processing": 0,
        "done": 3,
        "failed": 1,
        "needs_review": 0,
        "total": 4,
    }
    assert body["results_url"] == f"/v1/batches/{batch_id}/results"
    time.sleep(2.5)  # longer than the backoff: nothing more comes after the success
    assert len(receiver.posts("/hooks/cli")) == 2
    with database(pipeline_settings) as sessions, session_scope(sessions) as session:
        batch = repository.get_batch(session, batch_id=batch_id)
        assert (batch.callback_status, batch.callback_attempts) == ("delivered", 2)


@pytest_services
def test_the_api_takes_a_callback_url_and_refuses_one_outside_the_allow_list(
    pipeline_settings: Settings, shared_worker: Worker, scan_dir: Path, receiver: Receiver
) -> None:
    store = open_store(pipeline_settings.storage_url, endpoint_url=pipeline_settings.s3_endpoint_url)
    prefix = f"hook-{uuid.uuid4().hex[:6]}"
    uris = [store.put(f"{prefix}/{p.name}", p.read_bytes()) for p in sorted(scan_dir.glob("*.jpg"))[:2]]
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with TestClient(create_app(pipeline_settings)) as client:
        refused = client.post(
            "/v1/batches", json={"uris": uris, "callback_url": "http://10.0.0.7/admin"}, headers=auth
        )
        created = client.post(
            "/v1/batches", json={"uris": uris, "callback_url": f"{receiver.url}/hooks/api"}, headers=auth
        )
        assert created.status_code == 202, created.text
        batch_id = created.json()["id"]
        assert created.json()["callback"] == {
            "status": "waiting",
            "attempts": 0,
            "delivered_at": None,
            "error": None,
        }
        wait_for_batch(pipeline_settings, batch_id, worker=shared_worker)
        posts = receiver.wait_for("/hooks/api")
        shown = client.get(f"/v1/batches/{batch_id}", headers=auth).json()

    assert refused.status_code == 422
    assert "10.0.0.7" not in refused.text and "admin" not in refused.text
    assert "DONUT_HOLE_CALLBACK_ALLOWED_URLS" in refused.json()["detail"]
    assert len(posts) == 1 and signature_ok(posts[0], CALLBACK_SECRET.encode())
    assert json.loads(posts[0].body)["counts"]["done"] == 2
    assert shown["callback"]["status"] == "delivered" and shown["callback"]["attempts"] == 1


@pytest_services
def test_batches_that_end_without_a_group_or_while_listing_post_too(
    pipeline_settings: Settings, shared_worker: Worker, scan_dir: Path, tmp_path: Path, receiver: Receiver
) -> None:
    from donut_hole.worker.enqueue import submit_files, submit_prefix

    store = open_store(pipeline_settings.storage_url, endpoint_url=pipeline_settings.s3_endpoint_url)
    prefix = f"hook-prefix-{uuid.uuid4().hex[:6]}"
    for path in sorted(scan_dir.glob("*.jpg"))[:2]:
        store.put(f"{prefix}/{path.name}", path.read_bytes())
    (tmp_path / "empty.jpg").write_bytes(b"")
    with Services(pipeline_settings) as services:
        listed = submit_prefix(
            services, prefix_uri=f"{store.url}/{prefix}/", callback_url=f"{receiver.url}/hooks/prefix"
        )
        nothing = submit_prefix(
            services, prefix_uri=f"{store.url}/{prefix}-none/", callback_url=f"{receiver.url}/hooks/none"
        )
        refused = submit_files(
            services, paths=[tmp_path / "empty.jpg"], callback_url=f"{receiver.url}/hooks/refused"
        )

    bodies = {}
    for path in ("prefix", "none", "refused"):
        (post,) = receiver.wait_for(f"/hooks/{path}")
        assert signature_ok(post, CALLBACK_SECRET.encode())
        bodies[path] = json.loads(post.body)
    assert (bodies["prefix"]["batch_id"], bodies["prefix"]["counts"]["done"]) == (listed, 2)
    assert (bodies["none"]["batch_id"], bodies["none"]["status"]) == (nothing, "failed")
    assert bodies["none"]["counts"]["total"] == 0
    assert (bodies["refused"]["batch_id"], bodies["refused"]["counts"]["failed"]) == (refused, 1)


@pytest_services
def test_a_finished_batch_is_posted_before_the_backlog_of_other_batches_is_read(
    pipeline_settings: Settings,
    start_worker,
    scan_dir: Path,
    receiver: Receiver,
) -> None:
    # One pool process, one document per group, and 16 groups of another batch queued behind the first
    # batch's: its callback goes on the callbacks queue, which the worker takes next, not after the 16.
    settings = pipeline_settings.model_copy(
        update={"queue": f"test-{uuid.uuid4().hex[:10]}", "batch_size": 1}
    )
    scans = sorted(scan_dir.glob("*.jpg"))
    from donut_hole.worker.enqueue import submit_files

    try:
        with Services(settings) as services:
            first = submit_files(services, paths=scans[:1], callback_url=f"{receiver.url}/hooks/first")
            backlog = submit_files(services, paths=scans[1:17])
        worker = start_worker(settings)
        (post,) = receiver.wait_for("/hooks/first", timeout_s=120)
        with database(settings) as sessions, session_scope(sessions) as session:
            behind = repository.batch_progress(session, batch_id=backlog)
        assert json.loads(post.body)["batch_id"] == first
        assert behind["total"] == 16 and behind["queued"] >= 8, behind
        assert wait_for_batch(settings, backlog, worker=worker)["done"] == 16
    finally:
        purge(settings)


@pytest_services
def test_misbehaving_receivers_never_hold_up_reading_and_each_callback_ends(
    pipeline_settings: Settings, start_worker, scan_dir: Path, raw_receiver: RawReceiver
) -> None:
    # One pool process. Four receivers misbehave (a byte every 0.5 s, no answer, an answer cut short, a
    # redirect) and one answers; while the trickling and the hanging POSTs are held open, documents of
    # another batch are read all the same (the callbacks' threads hold those POSTs, not the pool process).
    # Each callback then ends after its two tries, one try at a time.
    settings = pipeline_settings.model_copy(
        update={
            "queue": f"test-{uuid.uuid4().hex[:10]}",
            "batch_size": 1,
            "callback_timeout_s": 8.0,
            "callback_max_attempts": 2,
        }
    )
    scans = sorted(scan_dir.glob("*.jpg"))
    from donut_hole.worker.enqueue import submit_files

    paths = ["/trickle", "/hang", "/half", "/redirect", "/ok"]
    try:
        worker = start_worker(settings)
        with Services(settings) as services:
            wait_for_batch(settings, submit_files(services, paths=scans[:1]), worker=worker)  # loaded
            hooked = {
                path: submit_files(services, paths=scans[:1], callback_url=f"{raw_receiver.url}{path}")
                for path in paths
            }
            for batch_id in hooked.values():
                wait_for_batch(settings, batch_id, worker=worker)
            held_until = time.monotonic() + 30
            while not (raw_receiver.of("/hang") and raw_receiver.of("/trickle")):
                assert time.monotonic() < held_until, raw_receiver.exchanges
                time.sleep(0.02)
            behind = submit_files(services, paths=scans[1:9])
            with database(settings) as sessions:
                while True:  # when the first document of the batch behind is stored
                    with session_scope(sessions) as session:
                        if repository.batch_progress(session, batch_id=behind)["done"]:
                            first_read = time.monotonic()
                            break
                    assert worker.process.poll() is None, worker.log_tail()
                    assert time.monotonic() < held_until + 90, worker.log_tail()
                    time.sleep(0.02)
            assert wait_for_batch(settings, behind, worker=worker)["done"] == 8

        states: dict[str, tuple[str | None, int, str | None]] = {}
        wait_until = time.monotonic() + 60
        with database(settings) as sessions:
            while time.monotonic() < wait_until:
                with session_scope(sessions) as session:
                    for path, batch_id in hooked.items():
                        batch = repository.get_batch(session, batch_id=batch_id)
                        states[path] = (batch.callback_status, batch.callback_attempts, batch.callback_error)
                if all(state[0] in ("delivered", "failed") for state in states.values()):
                    break
                time.sleep(0.2)
    finally:
        purge(settings)

    for path in ("/trickle", "/hang"):
        first = min(raw_receiver.of(path), key=lambda e: e.started)
        assert first.started < first_read < (first.ended or first_read), (path, first, first_read)
    assert states["/ok"] == ("delivered", 1, None)
    assert states["/trickle"] == ("failed", 2, "no complete answer within 8 s")
    assert states["/hang"] == ("failed", 2, "no complete answer within 8 s")
    assert states["/half"][:2] == ("failed", 2) and "closed before the end" in str(states["/half"][2])
    assert states["/redirect"] == ("failed", 2, "HTTP 307 (redirects are not followed)")
    for path in paths:
        exchanges = sorted(raw_receiver.of(path), key=lambda e: e.started)
        assert len(exchanges) == states[path][1], path  # one POST per counted try
        for earlier, later in itertools.pairwise(exchanges):
            assert earlier.ended is not None and earlier.ended <= later.started, path  # never at once
