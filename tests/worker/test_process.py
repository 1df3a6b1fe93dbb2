"""The plain processing functions, in this process, on SQLite and a local store (no broker involved)."""

from __future__ import annotations

import http.server
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import func, select

from donut_hole.db import Extraction, migrate, repository, session_scope
from donut_hole.settings import Settings
from donut_hole.storage import S3Store, make_s3_client, open_store
from donut_hole.worker import metrics
from donut_hole.worker.process import expand_prefix, fail_unfinished, process_group
from donut_hole.worker.runtime import Runtime, signals_held

if TYPE_CHECKING:
    from donut_hole.model.predict import DonutReader


@pytest.fixture
def runtime(tmp_path: Path, tiny_model: Path) -> Iterator[Runtime]:
    settings = Settings(
        data_dir=tmp_path, model_path=tiny_model, max_new_tokens=8, batch_size=3, max_retries=1
    )
    migrate.upgrade(settings.database_url)
    rt = Runtime(settings)
    yield rt
    rt.close()


@contextmanager
def _soft_time_limit_in(delay_s: float) -> Iterator[None]:
    """Celery's soft time limit as its pool delivers it: a signal whose handler raises
    ``SoftTimeLimitExceeded`` wherever this process is, ``delay_s`` from now (a timer here)."""

    def time_is_up(*_: object) -> None:
        raise SoftTimeLimitExceeded()

    previous = signal.signal(signal.SIGALRM, time_is_up)
    signal.setitimer(signal.ITIMER_REAL, delay_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _batch(rt: Runtime, uris: list[str]) -> list[str]:
    with session_scope(rt.sessions) as session:
        return [d.id for d in repository.create_batch(session, source="test", uris=uris).documents]


def _sample(counter: object, **labels: str) -> float:
    return counter.labels(**labels)._value.get() if labels else counter._value.get()  # type: ignore[attr-defined]


def test_a_group_is_read_once_and_a_redelivery_is_skipped(runtime: Runtime, scan_dir: Path) -> None:
    store = open_store(runtime.settings.storage_url)
    uris = [store.put(f"in/{p.name}", p.read_bytes()) for p in sorted(scan_dir.glob("*.jpg"))[:3]]
    ids = _batch(runtime, [*uris, store.put("in/empty.jpg", b"")])
    done_before = _sample(metrics.DOCUMENTS_PROCESSED)

    first = process_group(runtime, ids)
    again = process_group(runtime, ids)  # the same message delivered twice

    assert sorted(first.done) == sorted(ids[:3]) and first.failed == {
        ids[3]: "empty object: the scan has no bytes"
    }
    assert (
        sorted(again.skipped) == sorted(ids) and again.done == [] and again.failed == {}
    )  # done or failed: final
    assert _sample(metrics.DOCUMENTS_PROCESSED) - done_before == 3
    with session_scope(runtime.sessions) as session:
        assert session.scalar(select(func.count()).select_from(Extraction)) == 3
        attempts = [repository.get_document(session, document_id=i).attempts for i in ids[:3]]
    assert attempts == [1, 1, 1]


def test_transient_storage_errors_ask_for_a_retry_then_fail_on_the_last_try(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with socket.socket() as sock:  # a port where nothing listens: S3 is "down"
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings(
        data_dir=tmp_path,
        storage_url="s3://scans",
        s3_endpoint_url=f"http://127.0.0.1:{port}",
        model_path=tiny_model,
    )
    migrate.upgrade(settings.database_url)
    rt = Runtime(settings)
    # One attempt per call (the default client retries 5 times with backoff); the task decides about retries.
    rt.__dict__["store"] = S3Store(
        "scans", "", make_s3_client(endpoint_url=settings.s3_endpoint_url, max_attempts=1)
    )
    (document_id,) = _batch(rt, ["s3://scans/a.jpg"])

    outcome = process_group(rt, [document_id])
    assert list(outcome.retry) == [document_id], outcome
    assert "unreachable" in outcome.retry[document_id]
    with session_scope(rt.sessions) as session:  # a user sees it waiting, and why
        document = repository.get_document(session, document_id=document_id)
        assert document.status == "queued" and document.error.startswith(
            "retrying after attempt 1: S3 unreachable"
        )
        assert document.attempts == 0, "an attempt that ended in a retry does not count as a lost one"
    outcome = process_group(rt, [document_id], last_try=True)
    assert outcome.failed[document_id].startswith(
        "transient: the object store did not answer for 1200 s of retries: S3 unreachable"
    )
    rt.close()


def test_a_document_tried_too_often_is_failed_with_the_reason(runtime: Runtime, scan_dir: Path) -> None:
    store = open_store(runtime.settings.storage_url)
    (document_id,) = _batch(runtime, [store.put("x.jpg", (scan_dir / "000000.jpg").read_bytes())])
    for _ in range(runtime.settings.max_retries + 1):  # attempts that ended with the worker dying
        with session_scope(runtime.sessions) as session:
            repository.mark_processing(session, document_id=document_id)

    outcome = process_group(runtime, [document_id])

    assert outcome.failed[document_id].startswith("gave up after 2 attempts: the worker stopped")


def test_fail_unfinished_leaves_finished_documents_alone(runtime: Runtime, scan_dir: Path) -> None:
    store = open_store(runtime.settings.storage_url)
    good = store.put("ok.jpg", (scan_dir / "000001.jpg").read_bytes())
    ids = _batch(runtime, [good, store.put("later.jpg", b"x")])
    process_group(runtime, ids[:1])

    assert fail_unfinished(runtime, ids, reason="timed out", kind="timeout") == [ids[1]]
    with session_scope(runtime.sessions) as session:
        statuses = [repository.get_document(session, document_id=i).status.value for i in ids]
    assert statuses == ["done", "failed"]


def test_expanding_a_prefix_adds_images_once_and_sends_groups(runtime: Runtime, scan_dir: Path) -> None:
    store = open_store(runtime.settings.storage_url)
    for path in sorted(scan_dir.glob("*.jpg"))[:7]:
        store.put(f"day1/{path.name}", path.read_bytes())
    store.put("day1/metadata.jsonl", b"{}")
    with session_scope(runtime.sessions) as session:
        batch_id = repository.create_batch(session, source="test", uris=[], expanding=True).id
    sent: list[list[str]] = []

    assert expand_prefix(runtime, batch_id=batch_id, prefix_uri="day1/", send=sent.append) == 7
    assert [len(group) for group in sent] == [3, 3, 1]
    # A retried listing adds nothing and sends the still-queued documents again.
    resent: list[list[str]] = []
    expand_prefix(runtime, batch_id=batch_id, prefix_uri="day1/", send=resent.append)
    assert sorted(chain(*resent)) == sorted(chain(*sent))
    with session_scope(runtime.sessions) as session:
        assert repository.batch_progress(session, batch_id=batch_id)["total"] == 7
        assert repository.get_batch(session, batch_id=batch_id).status.value == "accepted"
        empty = repository.create_batch(session, source="test", uris=[], expanding=True).id
    assert expand_prefix(runtime, batch_id=empty, prefix_uri="nothing/", send=sent.append) == 0
    with session_scope(runtime.sessions) as session:
        batch = repository.get_batch(session, batch_id=empty)
        assert batch.status.value == "failed" and "no images under nothing/" in batch.error


def test_a_time_limit_while_the_model_loads_is_a_time_out_not_a_broken_model(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Celery stops a task at its soft time limit by raising SoftTimeLimitExceeded from a signal handler,
    # wherever the task is. Raised inside the model's loading (a worker's first group on a slow machine)
    # it tore torch's state (its device context left on "meta": every later load in the process failed)
    # or came out as another error. Now it waits for the end of the load: the group times out, and the
    # model is loaded, whole, and kept for the next group. A timer raises it here at delays into the
    # loads of a real model folder (about 0.2 s each).
    import torch

    loads: list[Runtime] = []
    load = Runtime._load_reader

    def counted(self: Runtime) -> DonutReader:
        loads.append(self)
        return load(self)

    monkeypatch.setattr(Runtime, "_load_reader", counted)

    raised: list[type[BaseException]] = []
    for delay_s in (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05):
        rt = Runtime(Settings(model_path=tiny_model, max_new_tokens=8))
        with _soft_time_limit_in(delay_s):
            try:
                rt.reader  # noqa: B018  # the load is the property's first use
            except Exception as exc:
                raised.append(type(exc))
        assert torch.get_default_device() == torch.device("cpu")
        assert torch.get_default_dtype() == torch.float32
        assert rt.reader.max_new_tokens == 8  # kept: no second load
        assert loads.count(rt) == 1
    assert raised == [SoftTimeLimitExceeded] * 8


def test_signals_held_run_their_handlers_after_the_block_in_order_and_once() -> None:
    import os

    came: list[int] = []
    done: list[str] = []

    def note(signum: int, _: object) -> None:
        came.append(signum)

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    previous = {
        signal.SIGUSR1: signal.signal(signal.SIGUSR1, stop),
        signal.SIGUSR2: signal.signal(signal.SIGUSR2, note),
    }
    try:
        with pytest.raises(KeyboardInterrupt), signals_held():
            os.kill(os.getpid(), signal.SIGUSR2)
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.05)  # delivered by now, and held
            done.append("block")
        assert done == ["block"] and came == [signal.SIGUSR2]
        assert signal.getsignal(signal.SIGUSR1) is stop and signal.getsignal(signal.SIGUSR2) is note
        os.kill(os.getpid(), signal.SIGUSR2)  # after the block, handlers run as before
        time.sleep(0.05)
        assert came == [signal.SIGUSR2, signal.SIGUSR2]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _SlowS3(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the same object, after a pause: an S3 endpoint that takes its time."""

    body = b""
    pause_s = 0.5

    def do_GET(self) -> None:  # http.server's naming
        time.sleep(self.pause_s)
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *_: object) -> None:
        pass


def test_a_time_limit_during_an_s3_read_stops_the_group(
    tmp_path: Path, tiny_model: Path, scan_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Celery's soft limit, raised from a signal handler while botocore waits for S3's answer, is caught by
    # botocore as an HTTP client error that it retries: the exception is gone and the read goes on. The
    # group's own deadline still stops it before the forward pass.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    _SlowS3.body = (scan_dir / "000000.jpg").read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = Settings(
        data_dir=tmp_path,
        storage_url="s3://scans",
        s3_endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
        model_path=tiny_model,
        max_new_tokens=8,
    )
    migrate.upgrade(settings.database_url)
    rt = Runtime(settings)
    (document_id,) = _batch(rt, ["s3://scans/a.jpg"])

    try:
        with _soft_time_limit_in(0.1), pytest.raises(SoftTimeLimitExceeded):  # well inside the server's pause
            process_group(rt, [document_id], deadline=time.monotonic() + 0.1)
    finally:
        server.shutdown()
    with session_scope(rt.sessions) as session:
        assert session.scalar(select(func.count()).select_from(Extraction)) == 0
        assert repository.get_document(session, document_id=document_id).status == "processing"
    rt.close()


def test_each_document_is_stored_as_soon_as_it_is_read(runtime: Runtime, scan_dir: Path, monkeypatch) -> None:
    """Through the decoding engine, a group's documents are persisted one by one as each page ends, not
    after the whole group was read."""
    store = open_store(runtime.settings.storage_url)
    uris = [store.put(f"in/{p.name}", p.read_bytes()) for p in sorted(scan_dir.glob("*.jpg"))[:3]]
    ids = _batch(runtime, uris)
    reader = runtime.reader
    assert reader.engine_ready()
    stream, stored = reader.stream, []

    def watched(pages, *, slots):
        for item in stream(pages, slots=slots):
            with session_scope(runtime.sessions) as session:
                stored.append(session.scalar(select(func.count()).select_from(Extraction)))
            yield item

    monkeypatch.setattr(reader, "stream", watched)
    assert sorted(process_group(runtime, ids).done) == sorted(ids)
    assert stored == [0, 1, 2]  # as each prediction came out, the ones before it were already stored


def test_a_worker_stores_where_each_field_was_read_and_routes_unsure_readings(tmp_path: Path) -> None:
    """With the shipped student, each stored field carries its box, which overlaps where the generator
    printed it; at a threshold above every confidence the document waits for review."""
    from donut_hole.documents.synth import render_sample
    from donut_hole.evaluation.boxes import box_iou, truth_boxes
    from donut_hole.model.confidence import kind_of

    student = Path(__file__).parents[2] / "models" / "donut-hole-small"
    settings = Settings(data_dir=tmp_path, model_path=student, batch_size=2)
    migrate.upgrade(settings.database_url)
    rt = Runtime(settings)
    try:
        store = open_store(settings.storage_url)
        sample = render_sample("shipping_label", seed=4545, index=0)
        path = tmp_path / "label.jpg"
        sample.image.save(path, format="JPEG", quality=sample.quality)
        uri = store.put("in/label.jpg", path.read_bytes())
        with session_scope(rt.sessions) as session:
            sure = repository.create_batch(session, source="test", uris=[uri]).documents[0].id
            unsure = repository.create_batch(session, source="test", uris=[uri], review_threshold=1.0)
            unsure_id = unsure.documents[0].id
        assert sorted(process_group(rt, [sure, unsure_id]).done) == sorted([sure, unsure_id])
        with session_scope(rt.sessions) as session:
            latest = repository.latest_extractions(session, document_ids=[sure, unsure_id])
            statuses = {d: repository.get_document(session, document_id=d).status for d in (sure, unsure_id)}  # type: ignore[union-attr]
            fields = [(f.name, f.box) for f in latest[sure].fields]
        assert statuses == {sure: "done", unsure_id: "needs_review"}
        _, truth = truth_boxes("shipping_label", seed=4545, index=0)
        printed = {kind_of(name): box for name, box in truth}
        ious = [box_iou(box, printed[name]) for name, box in fields if box is not None and name in printed]
        assert len(ious) >= 0.8 * len(fields) and sum(v >= 0.5 for v in ious) >= 0.7 * len(fields)
    finally:
        rt.close()
