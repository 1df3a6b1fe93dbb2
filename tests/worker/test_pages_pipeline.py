"""A 3-page PDF through the API and through the CLI, read by real workers: PostgreSQL, Redis, moto S3."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from multipage import broken, pdf_of
from typer.testing import CliRunner
from worker_helpers import Worker, database, settings_env, wait_for_batch

from donut_hole.api import create_app
from donut_hole.cli import app
from donut_hole.db import repository, session_scope
from donut_hole.settings import Settings, get_settings

pytestmark = pytest.mark.services

KEY = "pages-test-key-" + "z" * 20


def _pages(settings: Settings, batch_id: str) -> list[tuple[str, int, int | None, str, str | None]]:
    with database(settings) as sessions, session_scope(sessions) as session:
        rows = repository.results_for_batch(session, batch_id=batch_id)
    return [(r["uri"].rsplit("/", 1)[-1], r["page"], r["page_count"], r["status"], r["error"]) for r in rows]


@pytest.fixture
def cli_env(pipeline_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI of this process sees the pipeline's settings (PostgreSQL, Redis, moto S3)."""
    for name, value in settings_env(pipeline_settings).items():
        if name.startswith("DONUT_HOLE_"):
            monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_a_pdf_uploaded_through_the_api_gives_one_read_document_per_page(
    pipeline_settings: Settings, shared_worker: Worker, scan_dir: Path
) -> None:
    pdf = pdf_of(sorted(scan_dir.glob("*.jpg"))[:3])
    settings = pipeline_settings.model_copy(update={"api_keys": [KEY]})
    auth = {"Authorization": f"Bearer {KEY}"}
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/documents", files={"file": ("BOL 7.pdf", pdf)}, headers=auth)
        assert response.status_code == 202, response.text
        accepted = response.json()

        wait_for_batch(pipeline_settings, accepted["batch_id"], worker=shared_worker)

        document = client.get(f"/v1/documents/{accepted['document_id']}", headers=auth).json()
        results = client.get(f"/v1/batches/{accepted['batch_id']}/results", headers=auth).json()
    assert (document["page"], document["page_count"], len(document["source_sha256"])) == (1, 3, 64)
    assert [(p["page"], p["status"]) for p in document["pages"]] == [(1, "done"), (2, "done"), (3, "done")]
    assert [(item["page"], item["uri"].rsplit("/", 1)[-1]) for item in results["items"]] == [
        (1, "BOL_7.pdf"),
        (2, "BOL_7.pdf#page=2"),
        (3, "BOL_7.pdf#page=3"),
    ]
    assert all(item["status"] == "done" and item["model_id"] for item in results["items"])


def test_a_pdf_enqueued_with_the_cli_is_read_page_by_page_and_a_broken_one_fails_alone(
    pipeline_settings: Settings, shared_worker: Worker, scan_dir: Path, tmp_path: Path, cli_env: None
) -> None:
    scans = sorted(scan_dir.glob("*.jpg"))
    (tmp_path / "manifest.pdf").write_bytes(pdf_of(scans[3:6]))
    (tmp_path / "torn.pdf").write_bytes(broken(pdf_of(scans[:1])))
    (tmp_path / "label.jpg").write_bytes(scans[6].read_bytes())
    runner = CliRunner()

    enqueued = runner.invoke(app, ["enqueue", str(tmp_path)])
    assert enqueued.exit_code == 0, enqueued.output
    batch_id = enqueued.stdout.strip().splitlines()[0]
    counts = wait_for_batch(pipeline_settings, batch_id, worker=shared_worker)

    assert counts == {"queued": 0, "processing": 0, "done": 4, "failed": 1, "needs_review": 0, "total": 5}
    pages = _pages(pipeline_settings, batch_id)
    assert [row[:4] for row in pages] == [
        ("label.jpg", 1, 1, "done"),
        ("manifest.pdf", 1, 3, "done"),
        ("manifest.pdf#page=2", 2, 3, "done"),
        ("manifest.pdf#page=3", 3, 3, "done"),
        ("torn.pdf", 1, None, "failed"),
    ]
    assert pages[-1][4].startswith("not a readable PDF: ")
    shown = runner.invoke(app, ["results", "--batch", batch_id, "--format", "json"])
    assert shown.exit_code == 0, shown.output
    documents = json.loads(shown.stdout)["documents"]
    assert [(d["page"], d["page_count"]) for d in documents] == [(1, 1), (1, 3), (2, 3), (3, 3), (1, None)]
    table = runner.invoke(app, ["results", "--batch", batch_id], env={"COLUMNS": "200"})
    assert "manifest.pdf p. 2/3" in table.stdout
