"""/healthz checks the database and the broker (200 / 503); /metrics exposes the request counters."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from donut_hole.api import create_app

UNREACHABLE_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:1/none"  # nothing listens on port 1
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


def test_healthz_is_200_when_database_and_broker_answer(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "database": {"ok": True, "error": None},
        "broker": {"ok": True, "error": None},
    }


def test_healthz_is_503_when_the_database_is_unreachable(settings_factory: Any) -> None:
    with TestClient(create_app(settings_factory(database_url=UNREACHABLE_POSTGRES))) as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["database"] == {"ok": False, "error": "unreachable (OperationalError)"}
    assert body["broker"]["ok"] is True


def test_healthz_is_503_when_the_broker_is_unreachable(settings_factory: Any) -> None:
    with TestClient(create_app(settings_factory(broker_url=UNREACHABLE_REDIS))) as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["database"]["ok"] is True
    assert response.json()["broker"]["ok"] is False


def test_a_request_needing_an_unreachable_database_is_503(
    settings_factory: Any, auth: dict[str, str]
) -> None:
    with TestClient(create_app(settings_factory(database_url=UNREACHABLE_POSTGRES))) as client:
        response = client.get("/v1/batches/some-id", headers=auth)
    assert response.status_code == 503
    assert response.json() == {"detail": "the database is unavailable; retry later"}
    assert response.headers["retry-after"] == "5"


def _samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_count_requests_by_route_template(client: TestClient, auth: dict[str, str]) -> None:
    key = (
        "donut_hole_api_requests_total",
        (("method", "GET"), ("route", "/v1/batches/{batch_id}"), ("status", "404")),
    )
    before = _samples(client).get(key, 0.0)
    for batch_id in ("one", "two"):
        assert client.get(f"/v1/batches/{batch_id}", headers=auth).status_code == 404
    client.get("/no/such/route")
    after = _samples(client)
    assert after[key] == before + 2
    assert after[
        "donut_hole_api_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404"))
    ]
    latency = (
        "donut_hole_api_request_duration_seconds_count",
        (("method", "GET"), ("route", "/v1/batches/{batch_id}")),
    )
    assert after[latency] >= 2
    assert any(name == "process_cpu_seconds_total" for name, _ in after)
