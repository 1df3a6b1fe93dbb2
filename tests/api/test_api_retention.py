"""DELETE /v1/batches/{id}: a finished batch goes with its results and uploads; nothing else is lost."""

from __future__ import annotations

import io
import socket
import uuid
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from donut_hole.api import create_app
from donut_hole.db import Document, DocumentStatus, repository, session_scope
from donut_hole.settings import Settings
from donut_hole.storage import make_s3_client, parse_s3_uri

ALLOWED = "scans-allowed"  # in the test settings' allowed_buckets


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), "white").save(buffer, format="PNG")
    return buffer.getvalue()


def _upload(client: TestClient, auth: dict[str, str]) -> dict[str, Any]:
    response = client.post("/v1/documents", files={"file": ("label.png", _png(), "image/png")}, headers=auth)
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    accepted["uri"] = client.get(f"/v1/documents/{accepted['document_id']}", headers=auth).json()["uri"]
    return accepted


def _finish(sessions: sessionmaker[Session], batch_id: str) -> None:
    """What a worker would leave: every document of the batch read (done) or failed."""
    with session_scope(sessions) as session:
        model_id = repository.get_or_create_model(session, name="m", path="/models/m", sha256="c" * 64).id
        documents = session.scalars(select(Document).where(Document.batch_id == batch_id)).all()
        for number, document in enumerate(documents):
            if number % 2:
                repository.mark_failed(session, document_id=document.id, error="unreadable")
            else:
                repository.save_extraction(
                    session, document_id=document.id, model_id=model_id, raw_sequence="<s_x>1</s_x>",
                    data={"x": "1"}, confidence=0.9, latency_ms=1.0, fields=[("x", "1", 0.9)],
                )  # fmt: skip


def _exists(settings: Settings, uri: str) -> bool:
    bucket, key = parse_s3_uri(uri)
    listed = make_s3_client(endpoint_url=settings.s3_endpoint_url).list_objects_v2(Bucket=bucket, Prefix=key)
    return listed["KeyCount"] > 0


def _rows(sessions: sessionmaker[Session], batch_id: str) -> int:
    with session_scope(sessions) as session:
        return (
            session.scalar(select(func.count()).select_from(Document).where(Document.batch_id == batch_id))
            or 0
        )


def test_a_finished_upload_is_deleted_with_its_results_and_its_scan(
    client: TestClient, auth: dict[str, str], sessions: sessionmaker[Session], settings: Settings
) -> None:
    upload = _upload(client, auth)
    batch_id = upload["batch_id"]
    assert _exists(settings, upload["uri"])
    _finish(sessions, batch_id)

    response = client.delete(f"/v1/batches/{batch_id}", headers=auth)
    assert response.status_code == 200, response.text
    assert response.json() == {"id": batch_id, "documents": 1, "uploads": 1}
    assert not _exists(settings, upload["uri"])
    assert _rows(sessions, batch_id) == 0
    assert client.get(f"/v1/batches/{batch_id}", headers=auth).status_code == 404
    assert client.get(f"/v1/documents/{upload['document_id']}", headers=auth).status_code == 404
    again = client.delete(f"/v1/batches/{batch_id}", headers=auth)
    assert again.status_code == 404 and again.json() == {"detail": "this batch does not exist"}


def test_scans_of_your_own_buckets_and_uploads_another_batch_reads_stay(
    client: TestClient, auth: dict[str, str], sessions: sessionmaker[Session], settings: Settings
) -> None:
    upload = _upload(client, auth)
    s3 = make_s3_client(endpoint_url=settings.s3_endpoint_url)
    if ALLOWED not in [bucket["Name"] for bucket in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=ALLOWED)
    own = f"s3://{ALLOWED}/{uuid.uuid4().hex[:8]}/mine.png"
    s3.put_object(Bucket=ALLOWED, Key=parse_s3_uri(own)[1], Body=_png())
    # a second batch reads the same upload again (say, with a new model), and one of your own scans
    second = client.post("/v1/batches", json={"uris": [upload["uri"], own]}, headers=auth).json()["id"]
    _finish(sessions, upload["batch_id"])
    _finish(sessions, second)

    first = client.delete(f"/v1/batches/{upload['batch_id']}", headers=auth)
    assert first.status_code == 200 and first.json()["uploads"] == 0  # the second batch still reads it
    assert _exists(settings, upload["uri"])
    last = client.delete(f"/v1/batches/{second}", headers=auth)
    assert last.json() == {"id": second, "documents": 2, "uploads": 1}
    assert not _exists(settings, upload["uri"]) and _exists(settings, own)


def test_a_batch_with_work_under_way_is_409_and_kept(
    client: TestClient, auth: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    uris = [f"s3://{ALLOWED}/{uuid.uuid4().hex[:8]}/scan-{i}.png" for i in range(2)]
    batch_id = client.post("/v1/batches", json={"uris": uris}, headers=auth).json()["id"]
    response = client.delete(f"/v1/batches/{batch_id}", headers=auth)
    assert response.status_code == 409
    assert response.json() == {
        "detail": "this batch is not finished: 2 of its documents are still queued or being read"
    }
    assert _rows(sessions, batch_id) == 2
    assert client.delete(f"/v1/batches/{'0' * 36}", headers=auth).status_code == 404
    assert client.delete(f"/v1/batches/{batch_id}").status_code == 401  # the API key is required


def test_when_the_store_cannot_delete_the_batch_is_kept_and_the_answer_names_no_host(
    client: TestClient, auth: dict[str, str], sessions: sessionmaker[Session], settings: Settings
) -> None:
    upload = _upload(client, auth)
    _finish(sessions, upload["batch_id"])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: the store refuses connections
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
        broken = settings.model_copy(update={"s3_endpoint_url": dead})
        with TestClient(create_app(broken)) as other:
            response = other.delete(f"/v1/batches/{upload['batch_id']}", headers=auth)
    assert response.status_code == 503
    assert response.json()["detail"] == "the object store is unavailable; the batch is kept: retry later"
    assert "127.0.0.1" not in response.text
    assert _rows(sessions, upload["batch_id"]) == 1 and _exists(settings, upload["uri"])
    with session_scope(sessions) as session:
        document = repository.get_document(session, document_id=upload["document_id"])
        assert document is not None and document.status is DocumentStatus.done

    retried = client.delete(f"/v1/batches/{upload['batch_id']}", headers=auth)
    assert retried.json() == {"id": upload["batch_id"], "documents": 1, "uploads": 1}
