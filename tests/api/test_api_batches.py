"""POST /v1/batches writes the rows, then sends messages that really land in Redis; GET reads progress."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from donut_hole.db import repository, session_scope
from donut_hole.db.migrate import upgrade
from donut_hole.settings import Settings

ALLOWED = "scans-allowed"  # in the test settings' allowed_buckets


def _uris(count: int, bucket: str = ALLOWED) -> list[str]:
    folder = uuid.uuid4().hex[:8]
    return [f"s3://{bucket}/{folder}/scan-{i}.png" for i in range(count)]


def test_a_batch_of_uris_is_stored_then_queued(
    client: TestClient, auth: dict[str, str], messages: Any
) -> None:
    before = len(messages())
    uris = _uris(3)
    response = client.post("/v1/batches", json={"uris": uris}, headers=auth)
    assert response.status_code == 202, response.text
    batch = response.json()
    assert response.headers["location"] == f"/v1/batches/{batch['id']}"
    assert batch["source"] == "api"
    assert batch["status"] == "accepted"
    assert batch["counts"] == {"queued": 3, "processing": 0, "done": 0, "failed": 0, "needs_review": 0}
    assert batch["total"] == 3

    assert client.get(f"/v1/batches/{batch['id']}", headers=auth).json() == batch
    results = client.get(f"/v1/batches/{batch['id']}/results", headers=auth).json()
    assert [item["uri"] for item in results["items"]] == uris
    document_ids = [item["document_id"] for item in results["items"]]

    sent = messages()[before:]  # one group of up to batch_size (4) ids per message, in Redis
    assert [name for name, _ in sent] == ["donut_hole.process_documents"]
    assert sent[0][1] == [document_ids]


def test_batches_are_listed_newest_first_with_their_progress(
    client: TestClient, auth: dict[str, str]
) -> None:
    made = [client.post("/v1/batches", json={"uris": _uris(n)}, headers=auth).json() for n in (1, 2, 3)]
    listed = client.get("/v1/batches?limit=3", headers=auth).json()
    assert listed["total"] >= 3 and (listed["limit"], listed["offset"]) == (3, 0)
    assert listed["items"] == made[::-1]  # as GET /v1/batches/{id} shows each, newest first
    assert [item["total"] for item in listed["items"]] == [3, 2, 1]
    after = client.get("/v1/batches?limit=1&offset=1", headers=auth).json()["items"]
    assert [item["id"] for item in after] == [made[1]["id"]]
    for bad in ("limit=0", "limit=1001", "offset=-1", "limit=x"):
        assert client.get(f"/v1/batches?{bad}", headers=auth).status_code == 422
    assert client.get("/v1/batches").status_code == 401


def test_batches_are_filtered_by_whether_they_are_finished_and_by_date(
    client: TestClient, auth: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    since = datetime.now(UTC).isoformat()
    running, done = (
        client.post("/v1/batches", json={"uris": _uris(1)}, headers=auth).json() for _ in range(2)
    )
    with session_scope(sessions) as session:
        (document,) = repository.results_for_batch(session, batch_id=done["id"])
        repository.mark_failed(session, document_id=document["document_id"], error="unreadable")
    until = datetime.now(UTC).isoformat()

    def ids(query: dict[str, str]) -> list[str]:
        answer = client.get("/v1/batches", params=query, headers=auth)
        assert answer.status_code == 200, answer.text
        assert answer.json()["total"] == len(answer.json()["items"])
        return [item["id"] for item in answer.json()["items"]]

    assert ids({"created_after": since}) == [done["id"], running["id"]]
    assert ids({"created_after": since, "finished": "true"}) == [done["id"]]
    assert ids({"created_after": since, "finished": "false"}) == [running["id"]]
    assert ids({"created_after": since, "created_before": since}) == []
    assert running["id"] not in ids({"created_before": since})
    assert ids({"created_after": until}) == []
    for bad in ("created_after=2026-12-01T00:00:00", "created_after=yesterday", "finished=maybe"):
        assert client.get(f"/v1/batches?{bad}", headers=auth).status_code == 422  # a date needs its zone


def test_results_are_paginated(client: TestClient, auth: dict[str, str]) -> None:
    uris = _uris(5)
    batch_id = client.post("/v1/batches", json={"uris": uris}, headers=auth).json()["id"]
    page = client.get(f"/v1/batches/{batch_id}/results?limit=2&offset=3", headers=auth).json()
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 3)
    assert [item["uri"] for item in page["items"]] == uris[3:5]
    assert page["items"][0]["status"] == "queued"
    assert page["items"][0]["fields"] == {}
    past_the_end = client.get(f"/v1/batches/{batch_id}/results?offset=10", headers=auth).json()
    assert past_the_end["items"] == []
    for bad in ("limit=0", "limit=1001", "offset=-1"):
        assert client.get(f"/v1/batches/{batch_id}/results?{bad}", headers=auth).status_code == 422


def test_a_prefix_is_expanded_by_a_task(
    client: TestClient, auth: dict[str, str], messages: Any, s3_bucket: str
) -> None:
    before = len(messages())
    prefix = f"s3://{s3_bucket}/incoming-{uuid.uuid4().hex[:8]}/"
    response = client.post("/v1/batches", json={"prefix": prefix}, headers=auth)
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["status"] == "expanding"
    assert batch["total"] == 0
    assert messages()[before:] == [("donut_hole.expand_prefix", [batch["id"], prefix])]


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        ({"uris": [f"s3://{ALLOWED}/a.png", "s3://not-allowed/b.png"]}, "not-allowed"),
        (
            {"uris": ["s3://zz-other/a.png", "s3://not-allowed/b.png", "not-a-uri/c.png"]},
            "not-allowed, zz-other",
        ),
        ({"prefix": "s3://not-allowed/2024/"}, "not-allowed"),
    ],
)
def test_a_bucket_outside_the_allow_list_is_403(
    client: TestClient,
    auth: dict[str, str],
    messages: Any,
    sessions: Any,
    s3_bucket: str,
    body: dict[str, Any],
    refused: str,
) -> None:
    """The one rule of worker.enqueue (the allow list plus the store's bucket), answered 403, nothing kept."""
    from sqlalchemy import func, select

    from donut_hole.db import Batch

    with sessions() as session:
        batches = session.scalar(select(func.count()).select_from(Batch))
    before = len(messages())
    response = client.post("/v1/batches", json=body, headers=auth)
    assert response.status_code == 403
    allowed = ", ".join(sorted([ALLOWED, s3_bucket]))
    assert response.json() == {"detail": f"bucket(s) not allowed: {refused}; allowed: {allowed}"}
    assert len(messages()) == before
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == batches


def test_the_store_bucket_is_always_allowed(
    client: TestClient, auth: dict[str, str], settings: Settings, s3_bucket: str
) -> None:
    assert s3_bucket not in settings.allowed_buckets
    response = client.post("/v1/batches", json={"uris": _uris(1, bucket=s3_bucket)}, headers=auth)
    assert response.status_code == 202


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"uris": []},
        {"uris": "s3://scans-allowed/a.png"},
        {"uris": [f"s3://{ALLOWED}/a.png"], "prefix": f"s3://{ALLOWED}/"},
        {"uris": [f"s3://{ALLOWED}/a.png", f"s3://{ALLOWED}/a.png"]},
        {"uris": [f"s3://{ALLOWED}"]},  # no key
        {"uris": ["s3://a/b.png"]},  # invalid bucket name
        {"uris": [f"s3://{ALLOWED}/a.png\n"]},
        {"uris": [f"s3://{ALLOWED}/folder/"]},  # a prefix, not an object (refused by enqueue)
        {"uris": ["https://example.com/a.png"]},  # refused by enqueue
        {"uris": [f"s3://{ALLOWED}/{i}.png" for i in range(10_001)]},
        {"prefix": ""},
        {"uris": [f"s3://{ALLOWED}/a.png"], "priority": 1},
    ],
)
def test_malformed_bodies_are_422(client: TestClient, auth: dict[str, str], body: dict[str, Any]) -> None:
    response = client.post("/v1/batches", json=body, headers=auth)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


def test_a_body_that_is_not_json_is_422(client: TestClient, auth: dict[str, str]) -> None:
    headers = {**auth, "Content-Type": "application/json"}
    response = client.post("/v1/batches", content=b"{uris: nope", headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_unknown_batches_are_404(client: TestClient, auth: dict[str, str]) -> None:
    for path in ("/v1/batches/no-such-batch", f"/v1/batches/{uuid.uuid4()}/results"):
        response = client.get(path, headers=auth)
        assert response.status_code == 404
        assert "does not exist" in response.json()["detail"]


def test_rows_are_committed_before_the_broker_is_asked(
    settings_factory: Any, auth: dict[str, str], tmp_path: Any
) -> None:
    """With the broker down the client gets 503 naming the batch, and the batch is there to re-send."""
    from donut_hole.api import create_app

    settings = settings_factory(broker_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    upgrade(settings.database_url)
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/batches", json={"uris": ["scans/a.png"]}, headers=auth)  # a store key
        assert response.status_code == 503
        assert "broker is unreachable" in response.json()["detail"]
        assert "retry-after" not in response.headers  # a second POST would store a second batch
        batch_id = response.json()["batch_id"]
        batch = client.get(f"/v1/batches/{batch_id}", headers=auth).json()
        assert batch["counts"]["queued"] == 1


@pytest.mark.slow  # over 4 s: left out of make test-fast
def test_work_is_written_through_the_request_session_and_the_one_engine_is_disposed(
    settings_factory: Any, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app's services own the only engine; enqueue writes through the request's session."""
    from donut_hole import services
    from donut_hole.api import create_app
    from donut_hole.worker import enqueue

    engines: list[Engine] = []
    disposed: list[Engine] = []
    make_engine = services.make_engine

    def spy(url: str, **options: Any) -> Engine:
        engines.append(make_engine(url, **options))
        event.listen(engines[-1], "engine_disposed", disposed.append)
        return engines[-1]

    def no_session_of_its_own(*_: Any) -> None:
        raise AssertionError("enqueue opened a session of its own")

    monkeypatch.setattr(services, "make_engine", spy)
    monkeypatch.setattr(enqueue, "session_scope", no_session_of_its_own)
    settings = settings_factory(broker_url="redis://127.0.0.1:1/0")  # stored, then 503: nothing is sent
    upgrade(settings.database_url)
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    with TestClient(create_app(settings)) as client:
        written = [
            client.post("/v1/batches", json={"uris": ["scans/a.png"]}, headers=auth),
            client.post("/v1/batches", json={"prefix": "scans/"}, headers=auth),
            client.post("/v1/documents", files={"file": ("a.png", png, "image/png")}, headers=auth),
        ]
        assert [response.status_code for response in written] == [503, 503, 503]
        for response in written:
            assert client.get(f"/v1/batches/{response.json()['batch_id']}", headers=auth).status_code == 200
        assert len(engines) == 1 and disposed == []
    assert disposed == engines


def test_documents_failed_for_a_transient_reason_are_queued_again(
    client: TestClient, auth: dict[str, str], sessions: sessionmaker[Session], messages: Any
) -> None:
    with sessions() as session, session.begin():
        batch = repository.create_batch(
            session,
            source="test",
            uris=["s3://scans-allowed/a.png", "s3://scans-allowed/b.png"],
            errors=["transient: the object store did not answer for 1200 s of retries", "corrupt image"],
        )
        batch_id, (transient, _) = batch.id, [document.id for document in batch.documents]
    before = len(messages())

    response = client.post(f"/v1/batches/{batch_id}/retry-failed", headers=auth)

    assert response.status_code == 202, response.text
    assert response.json()["counts"] == {
        "queued": 1,
        "processing": 0,
        "done": 0,
        "failed": 1,
        "needs_review": 0,
    }
    assert messages()[before:] == [("donut_hole.process_documents", [[transient]])]
    assert client.post("/v1/batches/nope/retry-failed", headers=auth).status_code == 404


def test_a_batch_whose_documents_all_ended_is_finished(
    client: TestClient, auth: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    batch = client.post("/v1/batches", json={"uris": _uris(2)}, headers=auth).json()
    ids = [
        r["document_id"]
        for r in client.get(f"/v1/batches/{batch['id']}/results", headers=auth).json()["items"]
    ]
    with session_scope(sessions) as session:
        repository.mark_failed(session, document_id=ids[0], error="corrupt image")
    assert client.get(f"/v1/batches/{batch['id']}", headers=auth).json()["status"] == "accepted"  # one to go
    with session_scope(sessions) as session:
        repository.mark_failed(session, document_id=ids[1], error="corrupt image")
    shown = client.get(f"/v1/batches/{batch['id']}", headers=auth).json()
    assert shown["status"] == "finished" and shown["counts"]["failed"] == 2
    listed = client.get("/v1/batches", params={"limit": 50}, headers=auth).json()["items"]
    assert next(b for b in listed if b["id"] == batch["id"])["status"] == "finished"
