"""``Idempotency-Key``: a retried request gets the first try's batch back, and nothing is queued twice."""

from __future__ import annotations

import hashlib
import io
import socket
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from donut_hole.api import create_app, idempotency
from donut_hole.db import Batch, Document, make_engine, session_factory
from donut_hole.db.migrate import upgrade
from donut_hole.db.models import IdempotencyKey
from donut_hole.settings import Settings
from donut_hole.storage import make_s3_client, parse_s3_uri

ALLOWED = "scans-allowed"  # in the test settings' allowed_buckets


def _uris(count: int) -> list[str]:
    folder = uuid.uuid4().hex[:8]
    return [f"s3://{ALLOWED}/{folder}/scan-{i}.png" for i in range(count)]


def _png(colour: str = "white") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 16), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _batches_with(sessions: sessionmaker[Session], uri: str) -> int:
    with sessions() as session:
        return (
            session.scalar(select(func.count(func.distinct(Document.batch_id))).where(Document.uri == uri))
            or 0
        )


def test_a_retried_batch_request_returns_the_first_batch_and_queues_nothing_more(
    client: TestClient, auth: dict[str, str], messages: Any, sessions: sessionmaker[Session]
) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    uris = _uris(3)
    before = len(messages())
    first = client.post("/v1/batches", json={"uris": uris}, headers={**auth, **key})
    sent = len(messages())
    again = client.post("/v1/batches", json={"uris": uris}, headers={**auth, **key})

    assert first.status_code == again.status_code == 202, again.text
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"] and again.json()["total"] == 3
    assert again.headers["location"] == first.headers["location"]
    assert sent - before == 1 and len(messages()) == sent  # one message (one group) in all
    assert _batches_with(sessions, uris[0]) == 1

    # without the header, the same body is a new batch: the key is what makes a request the same one
    plain = client.post("/v1/batches", json={"uris": uris}, headers=auth)
    assert plain.status_code == 202 and plain.json()["id"] != first.json()["id"]


def test_the_same_key_with_another_request_is_422_and_writes_nothing(
    client: TestClient, auth: dict[str, str], messages: Any, sessions: sessionmaker[Session]
) -> None:
    key = {"Idempotency-Key": f"order-{uuid.uuid4().hex}"}
    first_uris, other_uris = _uris(1), _uris(2)
    assert client.post("/v1/batches", json={"uris": first_uris}, headers={**auth, **key}).status_code == 202
    before = len(messages())
    for body in (
        {"uris": other_uris},
        {"uris": first_uris, "callback_url": "http://127.0.0.1:9/hook"},
        {"prefix": f"s3://{ALLOWED}/somewhere/"},
    ):
        refused = client.post("/v1/batches", json=body, headers={**auth, **key})
        assert refused.status_code == 422, refused.text
        assert refused.json() == {"detail": idempotency.REUSED_DETAIL}
        assert first_uris[0] not in refused.text  # the first request is not shown
    assert len(messages()) == before
    assert _batches_with(sessions, other_uris[0]) == 0


def test_keys_belong_to_the_api_key_that_sent_them(
    client: TestClient, auth: dict[str, str], sessions: sessionmaker[Session], settings: Settings
) -> None:
    (other_key,) = [k for k in settings.api_keys if auth["Authorization"] != f"Bearer {k}"]
    key = {"Idempotency-Key": "shared-looking-key-" + uuid.uuid4().hex[:6]}
    uris = _uris(1)
    mine = client.post("/v1/batches", json={"uris": uris}, headers={**auth, **key})
    theirs = client.post(
        "/v1/batches", json={"uris": uris}, headers={"Authorization": f"Bearer {other_key}", **key}
    )
    assert mine.status_code == theirs.status_code == 202
    assert mine.json()["id"] != theirs.json()["id"] and "idempotent-replayed" not in theirs.headers
    assert _batches_with(sessions, uris[0]) == 2


@pytest.mark.parametrize("bad", ["", "with space", "é-accent".encode(), "k" * 256])
def test_a_malformed_key_is_422(client: TestClient, auth: dict[str, str], bad: str | bytes) -> None:
    response = client.post("/v1/batches", json={"uris": _uris(1)}, headers={**auth, "Idempotency-Key": bad})
    assert response.status_code == 422
    assert "Idempotency-Key must be 1 to 255 visible ASCII characters" in response.json()["detail"]


def test_a_request_that_loses_the_race_for_its_key_returns_the_winner(
    client: TestClient,
    auth: dict[str, str],
    messages: Any,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The second request looks its key up before the first one commits (the lookup misses), then writes
    # its own batch: the key's primary key refuses it, its rows roll back and it answers the first batch.
    key = {"Idempotency-Key": str(uuid.uuid4())}
    uris = _uris(2)
    first = client.post("/v1/batches", json={"uris": uris}, headers={**auth, **key}).json()
    before = len(messages())
    lookups = iter([None])
    real = idempotency.repository.find_idempotent

    def racing(session: Session, *, key_sha256: str) -> Any:
        return next(lookups, real(session, key_sha256=key_sha256))

    monkeypatch.setattr(idempotency.repository, "find_idempotent", racing)
    late = client.post("/v1/batches", json={"uris": uris}, headers={**auth, **key})

    assert late.status_code == 202, late.text
    assert late.json()["id"] == first["id"] and late.headers["idempotent-replayed"] == "true"
    assert len(messages()) == before and _batches_with(sessions, uris[0]) == 1
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Batch).where(Batch.id == first["id"])) == 1


def test_a_retried_upload_returns_the_first_document_and_stores_one_object(
    client: TestClient, auth: dict[str, str], messages: Any, settings: Settings
) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    data = _png(f"#{uuid.uuid4().hex[:6]}")  # a colour of its own: its bytes are in no other upload
    files = {"file": ("label.png", data, "application/octet-stream")}
    before = len(messages())
    first = client.post("/v1/documents", files=files, headers={**auth, **key})
    again = client.post("/v1/documents", files=files, headers={**auth, **key})
    other = client.post(
        "/v1/documents",
        files={"file": ("label.png", _png("black"), "application/octet-stream")},
        headers={**auth, **key},
    )

    assert first.status_code == again.status_code == 202, again.text
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert other.status_code == 422 and other.json() == {"detail": idempotency.REUSED_DETAIL}
    assert len(messages()) - before == 1
    uri = client.get(f"/v1/documents/{first.json()['document_id']}", headers=auth).json()["uri"]
    bucket, _ = parse_s3_uri(uri)
    s3 = make_s3_client(endpoint_url=settings.s3_endpoint_url)
    etag = f'"{hashlib.md5(data).hexdigest()}"'  # a single-part object's ETag is the MD5 of its bytes
    stored = [
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="api-store/uploads/")
        for item in page.get("Contents", [])
        if item["ETag"] == etag
    ]
    assert len(stored) == 1, stored


def test_an_upload_the_store_refused_can_be_retried_with_its_key(
    settings_factory: Any, auth: dict[str, str], s3_server: str
) -> None:
    # The store's endpoint refuses connections: the upload fails (503) with its document failed, and the
    # key is freed, so the retry (once the store is back) is stored, not answered with the failed batch.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
        settings = settings_factory(storage_url="s3://uploads/api", s3_endpoint_url=closed)
        upgrade(settings.database_url)
        key = {"Idempotency-Key": str(uuid.uuid4())}
        files = {"file": ("label.png", _png(), "application/octet-stream")}
        with TestClient(create_app(settings)) as down:
            first = down.post("/v1/documents", files=files, headers={**auth, **key})
            again = down.post("/v1/documents", files=files, headers={**auth, **key})
    assert first.status_code == again.status_code == 503, again.text
    assert "idempotent-replayed" not in again.headers
    engine = make_engine(settings.database_url)
    try:
        with session_factory(engine)() as session:
            statuses = session.scalars(select(Document.status)).all()
            assert [status.value for status in statuses] == ["failed", "failed"]  # two tries, two batches
            assert session.scalar(select(func.count()).select_from(IdempotencyKey)) == 0
    finally:
        engine.dispose()
