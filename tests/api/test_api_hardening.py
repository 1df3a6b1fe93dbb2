"""No string makes a route answer 500, and no error body shows hosts, paths, object reprs or the request.

The property test fuzzes every route with arbitrary text (NUL bytes, lone surrogates sent as invalid
UTF-8, very long values) on both databases; PostgreSQL is the one that refuses NUL bytes in text.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from donut_hole.api import create_app
from donut_hole.db.migrate import upgrade

# Any text, with the characters that broke routes before made likely: NUL, invalid UTF-8, slashes, '%', dots.
TEXT = st.one_of(
    st.text(max_size=40),
    st.text(
        alphabet=st.sampled_from(["\x00", "%", "/", "\\", "?", "#", "a", "é", "\udcff", "."]), max_size=12
    ),
    st.integers(min_value=4000, max_value=20_000).map(lambda n: "x" * n),
)


def _quoted(value: str) -> str:
    """Percent-encoded UTF-8, lone surrogates as the raw bytes they stand for (invalid UTF-8), dots too: an
    id of "." or ".." reaches the API as that id (an HTTP client removes dot segments from a path, so that
    ``/v1/batches/.`` would ask for the list instead)."""
    return quote(value.encode("utf-8", "surrogateescape"), safe="").replace(".", "%2E")


FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(value=TEXT)
@example(value=".")  # once drawn at random and failed: the client asked for /v1/batches/
@example(value="..")
def test_no_path_id_is_a_500(client: TestClient, auth: dict[str, str], value: str) -> None:
    for path in ("/v1/documents/{}", "/v1/batches/{}", "/v1/batches/{}/results"):
        response = client.get(path.format(_quoted(value)), headers=auth)
        if path == "/v1/batches/{}" and not value.strip("/"):  # /v1/batches/, /v1/batches/%2F: the list
            assert response.status_code == 200 and "items" in response.json(), response.text
            continue
        assert response.status_code in (404, 405, 422, 400), (path, value, response.text)
    deleted = client.delete(f"/v1/batches/{_quoted(value)}", headers=auth)
    assert deleted.status_code in (404, 405, 422, 400), (value, deleted.text)


@FUZZ
@given(field=TEXT, value=TEXT)
def test_no_search_is_a_500(client: TestClient, auth: dict[str, str], field: str, value: str) -> None:
    response = client.get(f"/v1/search?field={_quoted(field)}&value={_quoted(value)}", headers=auth)
    assert response.status_code in (200, 400, 422), (field, value, response.text)


@FUZZ
@given(uri=TEXT, prefix=TEXT)
def test_no_batch_body_is_a_500(client: TestClient, auth: dict[str, str], uri: str, prefix: str) -> None:
    for body in ({"uris": [uri]}, {"prefix": prefix}):
        raw = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogateescape")  # maybe invalid UTF-8
        headers = {**auth, "Content-Type": "application/json"}
        response = client.post("/v1/batches", content=raw, headers=headers)
        assert response.status_code < 500, (body, response.text)


@FUZZ
@given(name=TEXT)
def test_no_upload_name_is_a_500(client: TestClient, auth: dict[str, str], name: str) -> None:
    files = {"file": (name.encode("utf-8", "surrogateescape").decode("latin-1"), b"", "image/png")}
    response = client.post("/v1/documents", files=files, headers=auth)
    assert 400 <= response.status_code < 500, (name, response.text)


def test_a_nul_byte_in_an_id_is_404(client: TestClient, auth: dict[str, str]) -> None:
    assert client.get("/v1/documents/a%00b", headers=auth).status_code == 404
    assert client.get("/v1/batches/a%00b", headers=auth).status_code == 404
    assert client.get("/v1/search?field=a%00&value=b%00", headers=auth).status_code == 200


# ------------------------------------------------------------------------------------ what bodies hold

_LEAKS = re.compile(r"127\.0\.0\.1|localhost|:\d{2,5}\b|/tmp/|/work/|/var/|object at 0x|Traceback")


def _no_internals(text: str) -> None:
    assert not _LEAKS.search(text), text


def test_a_huge_invalid_body_is_not_echoed(client: TestClient, auth: dict[str, str]) -> None:
    big = "A" * 200_000
    response = client.post("/v1/batches", json={"uris": big}, headers=auth)
    assert response.status_code == 422
    assert len(response.content) < 4096 and "AAAAAAAAAA" not in response.text, len(response.content)
    response = client.post("/v1/batches", json={"nope": big}, headers=auth)
    assert response.status_code == 422 and "AAAAAAAAAA" not in response.text


def test_a_503_from_the_broker_names_no_host(
    settings_factory: Any, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_factory(broker_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    upgrade(settings.database_url)
    with TestClient(create_app(settings)) as down, caplog.at_level(logging.ERROR, "donut_hole.api"):
        response = down.post("/v1/batches", json={"uris": ["a.png"]}, headers=auth)
    assert response.status_code == 503
    _no_internals(response.text)
    assert response.json()["batch_id"]
    request_id = response.headers["x-request-id"]
    logged = [r for r in caplog.records if getattr(r, "fields", {}).get("request_id") == request_id]
    assert logged and "127.0.0.1:1" in str(logged[0].fields), "the details go to the log, with the request id"


def test_a_422_names_no_store_path(settings_factory: Any, auth: dict[str, str]) -> None:
    settings = settings_factory()  # a local-directory store under the test's temporary directory
    with TestClient(create_app(settings)) as local:
        response = local.post("/v1/batches", json={"uris": ["s3://bucket/a.png"]}, headers=auth)
        assert response.status_code == 422, response.text
        _no_internals(response.text)
        response = local.post("/v1/batches", json={"prefix": f"file://{uuid.uuid4()}/x/"}, headers=auth)
        assert response.status_code < 500
        _no_internals(response.text)


def test_an_unexpected_error_is_a_bare_500_with_a_request_id(settings_factory: Any) -> None:
    app = create_app(settings_factory())

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret at /work/x on 127.0.0.1:5432 <object at 0x7f>")

    with TestClient(app, raise_server_exceptions=False) as c:
        response = c.get("/boom")
    assert response.status_code == 500
    _no_internals(response.text)
    assert response.json()["request_id"] == response.headers["x-request-id"]
