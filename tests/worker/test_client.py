"""``donut_hole.client`` against the real API and a real worker (PostgreSQL, Redis, moto S3)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import API_KEY, CALLBACK_SECRET
from fastapi.testclient import TestClient
from multipage import pdf_of
from worker_helpers import Worker

from donut_hole.api import create_app
from donut_hole.client import ApiError, Client, verify
from donut_hole.settings import Settings
from donut_hole.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from donut_hole.storage import open_store


@pytest.mark.services
def test_the_client_uploads_waits_and_fetches_results(
    pipeline_settings: Settings, shared_worker: Worker, scan_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scans = sorted(scan_dir.glob("*.jpg"))
    store = open_store(pipeline_settings.storage_url, endpoint_url=pipeline_settings.s3_endpoint_url)
    uris = [store.put(f"client/{p.name}", p.read_bytes()) for p in scans[:2]]
    with TestClient(create_app(pipeline_settings)) as http, Client(api_key=API_KEY, http=http) as api:
        uploaded = api.upload(pdf_of(scans[:2]), filename="two.pdf")
        several = api.upload(scans[2:4])  # two files, one batch
        submitted = api.submit(uris)
        unsure = api.upload(scans[4], review_threshold=1.0)  # the untrained model: sure of nothing
        finished = api.wait(uploaded["batch_id"], timeout_s=120, poll_s=0.2)
        rows = list(api.results(uploaded["batch_id"]))
        assert api.wait(several["batch_id"], timeout_s=120, poll_s=0.2, progress=False)["counts"]["done"] == 2
        assert len(several["document_ids"]) == 2
        assert api.wait(submitted["id"], timeout_s=120, poll_s=0.2, progress=False)["counts"]["done"] == 2
        read = api.read(scans[0])
        assert (
            api.wait(unsure["batch_id"], timeout_s=120, poll_s=0.2, progress=False)["counts"]["needs_review"]
            == 1
        )
        waiting = [item for item in api.reviews() if item["batch_id"] == unsure["batch_id"]]
        assert [item["document_id"] for item in waiting] == [unsure["document_id"]]
        reading = api.document(unsure["document_id"])
        values = [(name, value) for name, many in reading["fields"].items()
                  for value in (many if isinstance(many, list) else [many])]  # fmt: skip
        reviewed = api.review(unsure["document_id"], values)
        assert reviewed["status"] == "done" and reviewed["reviewed_by"] == "api"
        with pytest.raises(ApiError) as missing:
            api.batch("00000000-0000-0000-0000-000000000000")
        with pytest.raises(ApiError) as empty:
            api.upload(b"", filename="empty.jpg")
    with (
        TestClient(create_app(pipeline_settings)) as http,
        Client(api_key="wrong", http=http) as stranger,
        pytest.raises(ApiError) as refused,
    ):
        stranger.batch(uploaded["batch_id"])

    assert finished["status"] == "finished" and finished["counts"]["done"] == 2
    assert [(row["page"], row["status"]) for row in rows] == [(1, "done"), (2, "done")]
    assert all(isinstance(row["fields"], dict) for row in rows)
    assert f"batch {uploaded['batch_id'][:8]}: 2/2 (100%)" in capsys.readouterr().err  # progress, no TTY
    assert read["status"] == "finished" and read["pages"][0]["status"] == "done"
    assert (missing.value.status, missing.value.detail) == (404, "this batch does not exist")
    assert (empty.value.status, empty.value.detail) == (422, "the uploaded file is empty")
    assert refused.value.status == 401


def test_the_client_checks_a_webhook_signature() -> None:
    body, now = b'{"event":"batch.finished"}', time.time()
    headers = {
        TIMESTAMP_HEADER: str(int(now)),
        SIGNATURE_HEADER: sign(CALLBACK_SECRET.encode(), timestamp=int(now), body=body),
    }
    lower = {name.lower(): value for name, value in headers.items()}  # as frameworks hand them over
    assert verify(CALLBACK_SECRET, headers, body) and verify(CALLBACK_SECRET, lower, body)
    assert not verify(CALLBACK_SECRET, headers, body + b" ")  # another body
    assert not verify("another secret", headers, body)
    assert not verify(CALLBACK_SECRET, headers, body, now=now + 600)  # too old: a replay
    assert not verify(CALLBACK_SECRET, {}, body)
