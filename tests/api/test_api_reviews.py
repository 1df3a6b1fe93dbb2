"""``/v1/reviews`` and ``/review``: what waits for a person, a document's scan, a reviewer's corrections."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from donut_hole.api import create_app
from donut_hole.db import DocumentStatus, Extraction, repository, session_scope
from donut_hole.settings import Settings
from donut_hole.storage import open_store

REVIEWER_KEY = "reviewer-key-" + "r" * 24
HOSTILE = '<script>alert("x")</script>\'"&'


@pytest.fixture(scope="module")
def review_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"reviewer_keys": [f"ana:{REVIEWER_KEY}"]})


@pytest.fixture(scope="module")
def review_client(review_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(review_settings)) as client:
        yield client


def waiting_document(settings: Settings, sessions: sessionmaker[Session], *, value: str = "DHL") -> str:
    """A scan in the store and its document, read with a field below the threshold: needs_review."""
    store = open_store(settings.storage_url, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region)
    buffer = io.BytesIO()
    Image.new("RGB", (480, 640), "white").save(buffer, format="PNG")
    uri = store.put(f"reviews/{uuid.uuid4().hex}.png", buffer.getvalue())
    with session_scope(sessions) as session:
        batch = repository.create_batch(session, source="test", uris=[uri], review_threshold=0.9)
        document_id = batch.documents[0].id
        model_id = repository.get_or_create_model(session, name="m", path="/m", sha256="b" * 64).id
        repository.save_extraction(
            session,
            document_id=document_id,
            model_id=model_id,
            raw_sequence="",
            data={"carrier": value, "weight": "2 kg"},
            confidence=0.8,
            latency_ms=1.0,
            fields=[("carrier", value, 0.42, [0.1, 0.1, 0.4, 0.2]), ("weight", "2 kg", 0.99, None)],
        )
    return document_id


def test_reviews_list_what_waits_oldest_first(
    review_client: TestClient, review_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    first = waiting_document(review_settings, sessions)
    second = waiting_document(review_settings, sessions)
    headers = {"Authorization": f"Bearer {REVIEWER_KEY}"}
    listed = review_client.get("/v1/reviews", params={"limit": 500}, headers=headers).json()
    ids = [item["document_id"] for item in listed["reviews"]]
    assert ids.index(first) < ids.index(second) and listed["total"] >= 2
    item = next(i for i in listed["reviews"] if i["document_id"] == first)
    assert item["lowest"] == 0.42 and item["fields"] == 2
    page = review_client.get("/v1/reviews", params={"limit": 1}, headers=headers).json()
    assert len(page["reviews"]) == 1 and page["next_offset"] == 1


def test_a_reviewer_sees_the_document_and_its_scan_and_corrects_it(
    review_client: TestClient, review_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    document_id = waiting_document(review_settings, sessions, value=HOSTILE)
    headers = {"Authorization": f"Bearer {REVIEWER_KEY}"}
    document = review_client.get(f"/v1/reviews/{document_id}", headers=headers).json()
    assert document["status"] == "needs_review"
    assert document["fields"] == {"carrier": HOSTILE, "weight": "2 kg"}
    assert document["field_boxes"] == {"carrier": [0.1, 0.1, 0.4, 0.2], "weight": None}
    image = review_client.get(f"/v1/reviews/{document_id}/image", headers=headers)
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(image.content)).size == (480, 640)

    body = {"fields": [{"name": "carrier", "value": "UPS"}, {"name": "weight", "value": "2 kg"}]}
    answer = review_client.post(f"/v1/reviews/{document_id}", json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    reviewed = answer.json()
    assert reviewed["status"] == "done" and reviewed["fields"]["carrier"] == "UPS"
    assert reviewed["reviewed_by"] == "ana" and reviewed["field_confidence"] == {
        "carrier": 1.0,
        "weight": 1.0,
    }
    with session_scope(sessions) as session:
        rows = session.scalars(select(Extraction).where(Extraction.document_id == document_id)).all()
        assert sorted((e.source, e.data["carrier"]) for e in rows) == [
            ("model", HOSTILE),
            ("reviewer", "UPS"),
        ]
    # the API's own view of the document serves the reviewed values
    api = review_client.get(
        f"/v1/documents/{document_id}", headers={"Authorization": f"Bearer {_api_key(review_settings)}"}
    )
    assert api.json()["fields"]["carrier"] == "UPS" and api.json()["status"] == DocumentStatus.done


def test_a_review_with_other_fields_is_refused_and_changes_nothing(
    review_client: TestClient, review_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    document_id = waiting_document(review_settings, sessions)
    headers = {"Authorization": f"Bearer {REVIEWER_KEY}"}
    body = {"fields": [{"name": "carrier", "value": "UPS"}]}
    answer = review_client.post(f"/v1/reviews/{document_id}", json=body, headers=headers)
    assert answer.status_code == 422 and "not the reading" in answer.json()["detail"]
    assert review_client.get(f"/v1/reviews/{document_id}", headers=headers).json()["status"] == "needs_review"
    missing = review_client.post(f"/v1/reviews/{uuid.uuid4()}", json=body, headers=headers)
    assert missing.status_code == 404


def test_a_reviewer_key_opens_nothing_but_reviews(review_client: TestClient) -> None:
    headers = {"Authorization": f"Bearer {REVIEWER_KEY}"}
    assert review_client.get("/v1/reviews", headers=headers).status_code == 200
    assert review_client.get("/v1/batches", headers=headers).status_code == 401
    assert review_client.get(f"/v1/documents/{uuid.uuid4()}", headers=headers).status_code == 401
    assert (
        review_client.post("/v1/batches", json={"uris": ["s3://x/a.png"]}, headers=headers).status_code == 401
    )
    assert review_client.get("/v1/reviews", headers={"Authorization": "Bearer ana"}).status_code == 401
    assert review_client.get("/v1/reviews").status_code == 401


def test_the_review_page_is_served_with_a_strict_policy(review_client: TestClient) -> None:
    page = review_client.get("/review")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    script = review_client.get("/review/review.js")
    assert script.status_code == 200 and "innerHTML" not in script.text
    assert review_client.get("/review/../main.py").status_code == 404
    assert review_client.get("/review/nothing.js").status_code == 404


def _api_key(settings: Settings) -> str:
    return settings.api_keys[0]
