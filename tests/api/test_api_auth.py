"""Every /v1 route needs a configured bearer key; without configured keys the API refuses everything."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient

from donut_hole.api import create_app
from donut_hole.api.deps import BAD_KEY_DETAIL, NO_KEYS_DETAIL, key_matches
from donut_hole.settings import Settings

PROTECTED = [
    ("GET", "/v1/batches/some-id"),
    ("GET", "/v1/batches/some-id/results"),
    ("GET", "/v1/documents/some-id"),
    ("GET", "/v1/search?field=a&value=b"),
    ("POST", "/v1/batches"),
    ("POST", "/v1/documents"),
]
BAD_HEADERS: list[dict[str, Any]] = [
    {},
    {"Authorization": "Bearer wrong-key"},
    {"Authorization": "Bearer "},
    {"Authorization": "Basic dGVzdDp0ZXN0"},
    {"Authorization": "Bearer caf\xe9".encode("latin-1")},  # not ASCII: refused, not a server error
]


def _call(client: TestClient, method: str, path: str, headers: dict[str, Any]) -> Any:
    if method == "POST" and path == "/v1/batches":
        return client.post(path, json={"uris": ["s3://scans-allowed/a.png"]}, headers=headers)
    if method == "POST":
        return client.post(
            path, files={"file": ("a.png", b"\x89PNG\r\n\x1a\n", "image/png")}, headers=headers
        )
    return client.request(method, path, headers=headers)


def test_missing_or_wrong_key_is_401(client: TestClient, auth: dict[str, str]) -> None:
    for method, path in PROTECTED:
        for headers in [*BAD_HEADERS, {"Authorization": auth["Authorization"] + "x"}]:
            response = _call(client, method, path, headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.json() == {"detail": BAD_KEY_DETAIL}
            assert response.headers["www-authenticate"] == "Bearer"


def test_every_configured_key_is_accepted(client: TestClient, settings: Settings) -> None:
    assert len(settings.api_keys) == 2
    for key in settings.api_keys:
        response = client.get("/v1/batches/unknown", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 404  # past the key check


def test_key_comparison() -> None:
    assert key_matches("b", ["a", "b"])
    assert not key_matches("", ["a"])
    assert not key_matches("a", [])
    assert not key_matches("ab", ["a", "b"])
    assert not key_matches("ключ", ["key"])


def test_without_configured_keys_every_request_is_refused(settings_factory: Any, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="donut_hole.api")
    with TestClient(create_app(settings_factory(api_keys=[]))) as anonymous:
        assert any(record.getMessage() == "api.no_keys" for record in caplog.records)
        for method, path in PROTECTED:
            for headers in [{}, {"Authorization": "Bearer "}, {"Authorization": "Bearer anything"}]:
                response = _call(anonymous, method, path, headers)
                assert response.status_code == 401, (method, path, headers)
                assert response.json() == {"detail": NO_KEYS_DETAIL}
        assert anonymous.get("/docs").status_code == 200  # open routes stay open


@pytest.mark.parametrize("path", ["/docs", "/openapi.json", "/healthz", "/metrics"])
def test_docs_health_and_metrics_need_no_key(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 200


def test_openapi_declares_the_bearer_scheme(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "One of the keys in DONUT_HOLE_API_KEYS, sent as 'Authorization: Bearer <key>'.",
    }
    assert spec["paths"]["/v1/batches"]["post"]["security"] == [{"ApiKey": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]
