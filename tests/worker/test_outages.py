"""Outages of PostgreSQL, S3 and Redis on real services, made by a loopback proxy that cuts connections.

The worker (a real ``celery worker`` process) reaches the service through the proxy; the test reads and
submits directly. Budgets are seconds here (``DONUT_HOLE_RETRY_BUDGET_S`` and friends), minutes in
production: the same code paths, kept fast. Every test checks the guarantee of the README: nothing lost,
nothing stranded (``queued`` with no message on its way), nothing wrongly failed, nothing stored twice.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proxy import Proxy
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from worker_helpers import Worker, database, purge, wait_for_batch

from donut_hole.db import Document, Extraction, session_scope
from donut_hole.services import Services
from donut_hole.settings import Settings
from donut_hole.storage import open_store
from donut_hole.worker.enqueue import submit_uris
from donut_hole.worker.sending import BrokerUnavailable

pytestmark = pytest.mark.services

FAST = {
    "retry_budget_s": 60,  # transient errors are retried this long (20 minutes in production)
    "retry_backoff_max_s": 1.0,  # longest wait between two tries
    "unsent_after_s": 2,  # a document queued and never sent this long is sent by a watchdog
    "stalled_after_s": 10,
    "max_retries": 0,  # no retry by count: transient errors are retried on the time budget alone
}


def _proxy_for(url: str) -> Proxy:
    parsed = make_url(url) if "://" in url and not url.startswith("http") else None
    if parsed is not None:
        return Proxy(parsed.host or "127.0.0.1", int(parsed.port or 0))
    host, port = url.split("//", 1)[1].rstrip("/").split(":")
    return Proxy(host, int(port))


def _through(url: str, proxy: Proxy) -> str:
    if url.startswith("http"):
        return f"http://127.0.0.1:{proxy.port}"
    return make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


@pytest.fixture
def direct(pipeline_settings: Settings) -> Iterator[Settings]:
    """The session's services, a queue of this test, and the fast budgets."""
    settings = pipeline_settings.model_copy(
        update={"queue": f"{pipeline_settings.queue}-{uuid.uuid4().hex[:6]}", **FAST}
    )
    yield settings
    purge(settings)


@pytest.fixture
def proxies() -> Iterator[list[Proxy]]:
    made: list[Proxy] = []
    yield made
    for proxy in made:
        proxy.close()


def _via(settings: Settings, proxies: list[Proxy], what: str, **update: Any) -> tuple[Settings, Proxy]:
    """``settings`` whose ``what`` (database, broker or s3) goes through a new proxy."""
    url = {"database": settings.database_url, "broker": settings.broker_url, "s3": settings.s3_endpoint_url}
    proxy = _proxy_for(str(url[what]))
    proxies.append(proxy)
    key = {"database": "database_url", "broker": "broker_url", "s3": "s3_endpoint_url"}[what]
    return settings.model_copy(update={key: _through(str(url[what]), proxy), **update}), proxy


def _upload(settings: Settings, scan_dir: Path, n: int) -> list[str]:
    store = open_store(settings.storage_url, endpoint_url=settings.s3_endpoint_url)
    prefix = f"outage-{uuid.uuid4().hex[:6]}"
    return [store.put(f"{prefix}/{p.name}", p.read_bytes()) for p in sorted(scan_dir.glob("*.jpg"))[:n]]


def _submit(settings: Settings, uris: list[str]) -> str:
    with Services(settings) as services:
        return submit_uris(services, uris=uris, source="test")


def _extractions(settings: Settings, batch_id: str) -> dict[str, tuple[str, int, str | None]]:
    with database(settings) as sessions, session_scope(sessions) as session:
        rows = session.execute(
            select(Document.id, Document.status, func.count(Extraction.id), Document.error)
            .outerjoin(Extraction, Extraction.document_id == Document.id)
            .where(Document.batch_id == batch_id)
            .group_by(Document.id)
        )
        return {doc_id: (status.value, count, error) for doc_id, status, count, error in rows}


def _wait_for_done(settings: Settings, batch_id: str, minimum: int, worker: Worker) -> None:
    deadline = time.monotonic() + 60
    while sum(s == "done" for s, _, _ in _extractions(settings, batch_id).values()) < minimum:
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.1)


def _assert_all_done_once(settings: Settings, batch_id: str, n: int) -> None:
    documents = _extractions(settings, batch_id)
    assert len(documents) == n
    assert {status for status, _, _ in documents.values()} == {"done"}, documents
    assert all(count == 1 for _, count, _ in documents.values()), "a document was stored twice"


def _outage_mid_batch(
    direct: Settings,
    worker_settings: Settings,
    proxy: Proxy,
    start_worker: Any,
    scan_dir: Path,
    *,
    documents: int,
    done_first: int,
) -> None:
    """Submit a batch, cut ``proxy`` for 4 s once ``done_first`` documents are read: none fails, each is
    stored once."""
    uris = _upload(direct, scan_dir, documents)
    batch_id = _submit(direct, uris)
    worker = start_worker(worker_settings)
    _wait_for_done(direct, batch_id, done_first, worker)
    with proxy.outage():
        time.sleep(4)
    counts = wait_for_batch(direct, batch_id, worker=worker, timeout_s=60)
    assert counts["failed"] == 0, _extractions(direct, batch_id)
    _assert_all_done_once(direct, batch_id, len(uris))


def test_a_database_outage_mid_batch_strands_nothing(
    direct: Settings, proxies: list[Proxy], start_worker: Any, scan_dir: Path
) -> None:
    """D1: PostgreSQL gone for 4 s while a worker reads a batch: every document ends done, once."""
    worker_settings, proxy = _via(direct, proxies, "database")
    _outage_mid_batch(direct, worker_settings, proxy, start_worker, scan_dir, documents=12, done_first=2)


def test_a_database_outage_longer_than_the_budget_is_sent_again(
    direct: Settings, proxies: list[Proxy], start_worker: Any, scan_dir: Path
) -> None:
    """D1: the tasks give up while the database is still down; the watchdog sends their documents again.

    A group that gives up cannot give back the attempt of the documents it had claimed: they count one
    against ``max_retries`` (the README's limits), hence 1 here.
    """
    worker_settings, proxy = _via(direct, proxies, "database", retry_budget_s=2, max_retries=1)
    _outage_mid_batch(direct, worker_settings, proxy, start_worker, scan_dir, documents=8, done_first=1)


def test_an_object_store_outage_fails_nothing(
    direct: Settings, proxies: list[Proxy], start_worker: Any, scan_dir: Path
) -> None:
    """D2: S3 gone for 4 s mid-batch: documents wait and retry; none is failed."""
    worker_settings, proxy = _via(direct, proxies, "s3")
    _outage_mid_batch(direct, worker_settings, proxy, start_worker, scan_dir, documents=12, done_first=2)


def test_past_the_budget_a_transient_failure_says_so_and_is_queued_again(
    direct: Settings, proxies: list[Proxy], start_worker: Any, scan_dir: Path
) -> None:
    """D2: an outage longer than the budget fails documents as transient; --retry-failed reads them."""
    from donut_hole.worker.recovery import retry_failed

    worker_settings, proxy = _via(direct, proxies, "s3", retry_budget_s=2)
    uris = _upload(direct, scan_dir, 4)
    proxy.cut()
    batch_id = _submit(direct, uris)
    worker = start_worker(worker_settings)
    counts = wait_for_batch(direct, batch_id, worker=worker, timeout_s=60)
    assert counts["failed"] == len(uris)
    errors = {error for _, _, error in _extractions(direct, batch_id).values()}
    assert all(error and error.startswith("transient:") for error in errors), errors
    proxy.restore()
    with Services(direct) as services:
        assert retry_failed(services, batch_id=batch_id) == len(uris)
    wait_for_batch(direct, batch_id, worker=worker, timeout_s=60)
    _assert_all_done_once(direct, batch_id, len(uris))


def test_documents_refused_by_a_broker_outage_are_sent_by_the_watchdog(
    direct: Settings, proxies: list[Proxy], start_worker: Any, scan_dir: Path
) -> None:
    """D1: the rows are stored, the broker is down (the API answers 503): a worker's watchdog sends them."""
    submitter, proxy = _via(direct, proxies, "broker")
    uris = _upload(direct, scan_dir, 4)
    with proxy.outage(), pytest.raises(BrokerUnavailable) as refused:
        _submit(submitter, uris)
    worker = start_worker(direct)
    wait_for_batch(direct, refused.value.batch_id, worker=worker, timeout_s=60)
    _assert_all_done_once(direct, refused.value.batch_id, len(uris))
