"""``POST /v1/read``: a small scan read while the client waits, by a real worker (PostgreSQL, Redis, moto
S3, ``celery worker``)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from conftest import API_KEY
from fastapi.testclient import TestClient
from multipage import pdf_of
from worker_helpers import Worker, purge

from donut_hole.api import create_app
from donut_hole.settings import Settings

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.mark.services
def test_a_small_scan_is_read_while_the_client_waits(
    pipeline_settings: Settings, shared_worker: Worker, scan_dir: Path
) -> None:
    scans = sorted(scan_dir.glob("*.jpg"))
    with TestClient(create_app(pipeline_settings)) as client:
        one = client.post("/v1/read", files={"file": ("label.jpg", scans[0].read_bytes())}, headers=AUTH)
        two = client.post("/v1/read", files={"file": ("two.pdf", pdf_of(scans[:2]))}, headers=AUTH)
        bad = client.post(
            "/v1/read", files={"file": ("bad.jpg", b"\xff\xd8\xff\xe0" + b"0" * 64)}, headers=AUTH
        )
        six = client.post("/v1/read", files={"file": ("six.pdf", pdf_of(scans[:6]))}, headers=AUTH)
        shown = client.get(f"/v1/documents/{one.json()['document_id']}", headers=AUTH).json()

    assert one.status_code == 200, one.text
    body = one.json()
    assert body["status"] == "finished" and len(body["pages"]) == 1
    page = body["pages"][0]
    assert page["status"] == "done" and isinstance(page["fields"], dict) and page["id"] == body["document_id"]
    assert page == shown  # the same document as GET shows it
    assert two.status_code == 200 and [p["page"] for p in two.json()["pages"]] == [1, 2]
    assert all(p["status"] == "done" for p in two.json()["pages"])
    assert bad.status_code == 200 and bad.json()["pages"][0]["status"] == "failed"
    assert bad.json()["pages"][0]["error"]  # a reason for people
    assert six.status_code == 413 and "DONUT_HOLE_READ_MAX_PAGES" in six.json()["detail"]


@pytest.mark.services
def test_a_read_not_done_within_the_wait_is_202_and_goes_on(
    pipeline_settings: Settings, scan_dir: Path
) -> None:
    idle = pipeline_settings.model_copy(update={"queue": f"test-{uuid.uuid4().hex[:10]}", "read_wait_s": 0.5})
    scan = sorted(scan_dir.glob("*.jpg"))[0].read_bytes()
    try:
        with TestClient(create_app(idle)) as client:  # no worker takes this queue
            response = client.post("/v1/read", files={"file": ("label.jpg", scan)}, headers=AUTH)
            later = client.get(response.headers["location"], headers=AUTH)
    finally:
        purge(idle)
    assert response.status_code == 202 and response.json()["status"] == "accepted"
    assert response.headers["location"] == f"/v1/documents/{response.json()['document_id']}"
    assert later.status_code == 200 and later.json()["status"] == "queued"
