"""POST /v1/documents stores a scan in S3 and queues it; GET /v1/documents and /v1/search read results."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from multipage import broken, coloured_pages, pdf_of, tiff_of
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from donut_hole.api import create_app
from donut_hole.db import repository
from donut_hole.settings import Settings
from donut_hole.storage import make_s3_client, parse_s3_uri


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 16), "white").save(buffer, format="PNG")
    return buffer.getvalue()


def _upload(client: TestClient, auth: dict[str, str], data: bytes, name: str = "label.png") -> Any:
    return client.post(
        "/v1/documents", files={"file": (name, data, "application/octet-stream")}, headers=auth
    )


def test_an_upload_is_stored_then_queued(
    client: TestClient, auth: dict[str, str], messages: Any, settings: Settings, s3_bucket: str
) -> None:
    before = len(messages())
    data = _png()
    response = _upload(client, auth, data, name="../My Label.png")
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "queued"
    document_id = accepted["document_id"]
    assert response.headers["location"] == f"/v1/documents/{document_id}"

    document = client.get(f"/v1/documents/{document_id}", headers=auth).json()
    assert document["batch_id"] == accepted["batch_id"]
    assert document["status"] == "queued"
    assert (document["fields"], document["confidence"], document["model"]) == ({}, None, None)
    bucket, key = parse_s3_uri(document["uri"])
    assert bucket == s3_bucket
    assert key.startswith("api-store/uploads/") and key.endswith("/My_Label.png")
    stored = make_s3_client(endpoint_url=settings.s3_endpoint_url).get_object(Bucket=bucket, Key=key)
    assert stored["Body"].read() == data

    assert messages()[before:] == [("donut_hole.process_documents", [[document_id]])]


def test_a_scan_over_the_limit_is_413(client: TestClient, auth: dict[str, str], settings: Settings) -> None:
    limit = settings.max_image_bytes
    at_limit = _png() + b"\x00" * (limit - len(_png()))
    assert _upload(client, auth, at_limit).status_code == 202
    over = _upload(client, auth, at_limit + b"\x00")  # refused by the route, after parsing
    assert over.status_code == 413
    assert over.json() == {"detail": f"the scan is larger than {limit} bytes (DONUT_HOLE_MAX_IMAGE_BYTES)"}
    far_over = _upload(client, auth, at_limit * 3)  # refused on its Content-Length, before reading
    assert far_over.status_code == 413
    assert "request body is larger than" in far_over.json()["detail"]


def test_a_chunked_body_over_the_limit_is_413(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    boundary = "donut-hole-test"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def chunks() -> Iterator[bytes]:  # no Content-Length: the body is counted as it arrives
        yield head + _png()
        for _ in range(3 * settings.max_image_bytes // 8192):
            yield b"\x00" * 8192
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    response = client.post("/v1/documents", content=chunks(), headers=headers)
    assert response.status_code == 413
    assert "request body is larger than" in response.json()["detail"]


def test_a_file_with_more_pages_than_the_limit_is_413_and_nothing_is_stored(
    auth: dict[str, str], messages: Any, settings: Settings, s3_bucket: str
) -> None:
    s3 = make_s3_client(endpoint_url=settings.s3_endpoint_url)

    def stored() -> int:
        return s3.list_objects_v2(Bucket=s3_bucket, Prefix="api-store/uploads/")["KeyCount"]

    with TestClient(create_app(settings.model_copy(update={"max_pages": 2}))) as client:
        before_messages, before_objects = len(messages()), stored()
        three = {"three.pdf": pdf_of(coloured_pages(3)), "three.tif": tiff_of(coloured_pages(3))}
        for name, data in three.items():
            response = _upload(client, auth, data, name=name)
            assert response.status_code == 413, name
            assert response.json()["detail"] == "the file has 3 pages, the limit is 2 (DONUT_HOLE_MAX_PAGES)"
        assert (len(messages()), stored()) == (before_messages, before_objects)  # nothing queued or kept

        assert _upload(client, auth, pdf_of(coloured_pages(2)), name="two.pdf").status_code == 202
        # a PDF whose pages cannot be counted here is the worker's to fail, with its reason
        assert _upload(client, auth, broken(pdf_of(coloured_pages(3))), name="cut.pdf").status_code == 202
        assert (len(messages()), stored()) == (before_messages + 2, before_objects + 2)


@pytest.mark.parametrize(
    "data", [b"%PD" + b"0" * 100, b"hello, this is text", b"BM" + b"\x00" * 40, b"PK\x03\x04zip"]
)
def test_a_file_that_is_not_an_image_is_415(client: TestClient, auth: dict[str, str], data: bytes) -> None:
    response = _upload(client, auth, data, name="scan.png")  # the name does not matter
    assert response.status_code == 415
    assert "not a JPEG, PNG, TIFF, WebP, BMP or GIF image nor a PDF" in response.json()["detail"]


def test_an_empty_or_missing_file_is_422(client: TestClient, auth: dict[str, str]) -> None:
    empty = _upload(client, auth, b"")
    assert empty.status_code == 422
    assert empty.json() == {"detail": "the uploaded file is empty"}
    missing = client.post("/v1/documents", data={"other": "x"}, headers=auth)
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "file"]


def test_an_unknown_document_is_404(client: TestClient, auth: dict[str, str]) -> None:
    response = client.get(f"/v1/documents/{uuid.uuid4()}", headers=auth)
    assert response.status_code == 404
    assert "does not exist" in response.json()["detail"]


def test_extracted_fields_are_read_and_searched(
    client: TestClient, auth: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    tracking = f"1Z{uuid.uuid4().hex[:12].upper()}"
    uris = [f"s3://scans-allowed/{uuid.uuid4().hex[:8]}/{name}.png" for name in ("a", "b")]
    batch_id = client.post("/v1/batches", json={"uris": uris}, headers=auth).json()["id"]
    rows = client.get(f"/v1/batches/{batch_id}/results", headers=auth).json()["items"]
    read_id, other_id = rows[0]["document_id"], rows[1]["document_id"]
    with sessions() as session, session.begin():
        model = repository.get_or_create_model(session, name="tiny-test", path="/m", sha256="0" * 64)
        model_id = model.id
        repository.save_extraction(
            session,
            document_id=read_id,
            model_id=model_id,
            raw_sequence="<s_tracking_number>...",
            data={"tracking_number": tracking, "items": [{"name": "bolt"}, {"name": "nut"}]},
            confidence=0.93,
            latency_ms=12.0,
            fields=[
                ("tracking_number", tracking, 0.99),
                ("items.name", "bolt", 0.9),
                ("items.name", "nut", 0.8),
            ],
            note="schema: shipping_label lacks carrier",
        )

    document = client.get(f"/v1/documents/{read_id}", headers=auth).json()
    assert document["status"] == "done" and document["error"] is None
    assert document["note"] == "schema: shipping_label lacks carrier"
    assert document["fields"] == {"tracking_number": tracking, "items.name": ["bolt", "nut"]}
    assert document["data"]["items"] == [{"name": "bolt"}, {"name": "nut"}]
    assert document["confidence"] == pytest.approx(0.93)
    assert document["field_confidence"] == {"tracking_number": 0.99, "items.name": [0.9, 0.8]}
    assert document["model"] == {"id": model_id, "name": "tiny-test"}
    assert document["finished_at"] is not None

    results = client.get(f"/v1/batches/{batch_id}/results", headers=auth).json()["items"]
    assert results[0]["fields"] == document["fields"] and results[0]["note"] == document["note"]
    assert results[0]["data"]["items"] == [{"name": "bolt"}, {"name": "nut"}]  # a list of objects
    assert results[1]["data"] is None
    assert results[0]["field_confidence"] == document["field_confidence"]
    assert results[1]["field_confidence"] == {}
    assert results[1]["document_id"] == other_id and results[1]["fields"] == {} and results[1]["note"] is None
    progress = client.get(f"/v1/batches/{batch_id}", headers=auth).json()
    assert progress["counts"] == {"queued": 1, "processing": 0, "done": 1, "failed": 0, "needs_review": 0}

    found = client.get("/v1/search", params={"field": "tracking_number", "value": tracking}, headers=auth)
    assert found.status_code == 200
    assert found.json()["field"] == "tracking_number"
    assert [item["id"] for item in found.json()["items"]] == [read_id]
    assert found.json()["items"][0]["fields"] == document["fields"]
    by_item = client.get("/v1/search", params={"field": "items.name", "value": "nut"}, headers=auth).json()
    assert read_id in [item["id"] for item in by_item["items"]]
    nothing = client.get("/v1/search", params={"field": "tracking_number", "value": "nope"}, headers=auth)
    assert nothing.json()["items"] == []


@pytest.mark.parametrize("query", ["", "field=a", "value=b", "field=&value=b", "field=a&value=b&limit=0"])
def test_a_search_without_field_and_value_is_422(
    client: TestClient, auth: dict[str, str], query: str
) -> None:
    assert client.get(f"/v1/search?{query}", headers=auth).status_code == 422


def test_answers_name_a_local_stores_objects_by_key_and_never_the_servers_paths(
    settings_factory: Any, auth: dict[str, str]
) -> None:
    """With a local store, a document's URI is its key in the store and a stored reason that names the
    store's folder shows ``<store>`` instead, in the document, the batch's results and search."""
    from donut_hole.db import migrate, session_scope
    from donut_hole.db.session import make_engine, session_factory

    settings = settings_factory()
    migrate.upgrade(settings.database_url)
    root = str(settings.data_dir.resolve())
    with TestClient(create_app(settings)) as client:
        accepted = _upload(client, auth, _png()).json()
        factory = session_factory(make_engine(settings.database_url))
        stored = (settings.data_dir / "store").resolve()
        with session_scope(factory) as session:
            error = f"cannot read {stored.as_uri()}/uploads/x.png: I/O error in {stored}/uploads"
            repository.mark_failed(session, document_id=accepted["document_id"], error=error)
        document = client.get(f"/v1/documents/{accepted['document_id']}", headers=auth).json()
        results = client.get(f"/v1/batches/{accepted['batch_id']}/results", headers=auth).json()["items"]
    assert document["uri"].startswith("uploads/") and document["uri"].endswith("/label.png")
    assert document["error"] == "cannot read <store>/uploads/x.png: I/O error in <store>/uploads"
    assert (results[0]["uri"], results[0]["error"]) == (document["uri"], document["error"])
    assert root not in str(document) and root not in str(results)


def test_search_by_prefix_without_case_and_page_by_page(
    client: TestClient, auth: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    stem = f"Zq{uuid.uuid4().hex[:10]}"
    uris = [f"s3://scans-allowed/{uuid.uuid4().hex[:8]}/{i}.png" for i in range(3)]
    batch_id = client.post("/v1/batches", json={"uris": uris}, headers=auth).json()["id"]
    ids = [
        row["document_id"]
        for row in client.get(f"/v1/batches/{batch_id}/results", headers=auth).json()["items"]
    ]
    with sessions() as session, session.begin():
        model = repository.get_or_create_model(session, name="tiny-test", path="/m", sha256="0" * 64)
        for i, document_id in enumerate(ids):
            value = f"{stem}-{i}" if i < 2 else f"{stem}%x"
            repository.save_extraction(
                session,
                document_id=document_id,
                model_id=model.id,
                raw_sequence="",
                data={"reference": value},
                confidence=0.9,
                latency_ms=1.0,
                fields=[("reference", value, 0.9)],
            )

    def search(**params: object) -> dict:
        response = client.get("/v1/search", params={"field": "reference", **params}, headers=auth)
        assert response.status_code == 200, response.text
        return response.json()

    assert search(value=stem.lower(), match="prefix")["items"] == []  # case-sensitive by default
    first = search(value=stem.lower(), match="prefix", case_sensitive="false", limit=2)
    rest = search(value=stem.lower(), match="prefix", case_sensitive="false", limit=2, offset=2)
    pages = [[item["id"] for item in page["items"]] for page in (first, rest)]
    assert [len(page) for page in pages] == [2, 1] and sorted(pages[0] + pages[1]) == sorted(ids)
    assert (first["next_offset"], rest["next_offset"]) == (2, None)
    assert [i["id"] for i in search(value=f"{stem}-1".upper(), case_sensitive="false")["items"]] == [ids[1]]
    assert [i["id"] for i in search(value=f"{stem}%", match="prefix")["items"]] == [ids[2]]  # % is literal
    from donut_hole.client import Client

    api = Client(api_key=auth["Authorization"].removeprefix("Bearer "), http=client)
    found = api.search("reference", stem.lower(), match="prefix", case_sensitive=False)
    assert sorted(document["id"] for document in found) == sorted(ids)  # every page
    unknown = client.get(
        "/v1/search", params={"field": "reference", "value": stem, "match": "x"}, headers=auth
    )
    assert unknown.status_code == 422


def test_several_files_are_one_batch_and_a_bad_one_refuses_them_all(
    client: TestClient, auth: dict[str, str], messages: Any, settings: Settings, s3_bucket: str
) -> None:
    s3 = make_s3_client(endpoint_url=settings.s3_endpoint_url)

    def stored() -> int:
        return s3.list_objects_v2(Bucket=s3_bucket, Prefix="api-store/uploads/")["KeyCount"]

    files = [("file", ("a.png", _png(), "image/png")), ("file", ("a.png", _png(), "image/png"))]
    files.append(("file", ("manifest.pdf", pdf_of(coloured_pages(2)), "application/pdf")))
    key = {"Idempotency-Key": f"multi-{uuid.uuid4().hex}"}
    response = client.post("/v1/documents", files=files, headers={**auth, **key})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert len(accepted["document_ids"]) == 3 and accepted["document_id"] == accepted["document_ids"][0]
    batch = client.get(f"/v1/batches/{accepted['batch_id']}", headers=auth).json()
    assert batch["total"] == 3 and batch["counts"]["queued"] == 3
    uris = [
        row["uri"]
        for row in client.get(f"/v1/batches/{accepted['batch_id']}/results", headers=auth).json()["items"]
    ]
    assert sorted(uri.rsplit("/", 1)[1] for uri in uris) == ["a-2.png", "a.png", "manifest.pdf"]  # distinct
    again = client.post("/v1/documents", files=files, headers={**auth, **key})  # a retry: the same batch
    assert again.json()["batch_id"] == accepted["batch_id"]
    assert sorted(again.json()["document_ids"]) == sorted(accepted["document_ids"])

    before = (len(messages()), stored())
    bad = [files[0], ("file", ("notes.txt", b"hello, this is text", "text/plain"))]
    refused = client.post("/v1/documents", files=bad, headers=auth)
    assert refused.status_code == 415 and (len(messages()), stored()) == before  # nothing queued or kept
