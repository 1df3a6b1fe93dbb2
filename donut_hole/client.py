"""A small client of the HTTP API: submit scans or URIs, wait for a batch, fetch its results, search, and
check a completion webhook's signature.

    >>> from donut_hole.client import Client
    >>> api = Client("http://127.0.0.1:8000", api_key="...")              # doctest: +SKIP
    >>> page = api.read("label.jpg")["pages"][0]                          # doctest: +SKIP
    >>> batch_id = api.upload("manifest.pdf")["batch_id"]                 # doctest: +SKIP
    >>> api.wait(batch_id)["status"]                                      # doctest: +SKIP
    'finished'
    >>> for row in api.results(batch_id):                                 # doctest: +SKIP
    ...     print(row["uri"], row["page"], row["fields"])

Answers are the API's JSON as plain dicts (the fields of ``/docs``). Every refused request raises
:class:`ApiError` with the status and the API's ``detail``; an unreachable server, ``httpx``'s own errors.
``api_key`` defaults to ``DONUT_HOLE_API_KEY``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import httpx

from donut_hole.progress import Progress
from donut_hole.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER
from donut_hole.signing import verify as _verify

PAGE = 500  # results and search rows per request


class ApiError(Exception):
    """A request the API refused: ``status`` (the HTTP status) and ``detail`` (its reason)."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


class Client:
    """The API at ``url``. ``http`` is an ``httpx.Client`` to use instead of a new one (tests pass
    FastAPI's ``TestClient``); :meth:`close` (or a ``with`` block) closes the one made here."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        http: httpx.Client | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("DONUT_HOLE_API_KEY")
        self._auth = (
            {"Authorization": f"Bearer {key}"} if key else {}
        )  # per request: a given http stays as it is
        self._own = http is None
        self.http = http if http is not None else httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self.http.close()

    # ---------------------------------------------------------------------------------------- requests

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {**self._auth, **(kwargs.pop("headers", None) or {})}
        response = self.http.request(method, path, headers=headers, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response.json()

    @staticmethod
    def _part(scan: str | Path | bytes, filename: str | None) -> tuple[str, tuple[str, bytes]]:
        if isinstance(scan, bytes):
            return ("file", (filename or "scan", scan))
        path = Path(scan)
        return ("file", (filename or path.name, path.read_bytes()))

    def upload(
        self,
        scans: str | Path | bytes | Sequence[str | Path | bytes],
        *,
        filename: str | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
        review_threshold: float | None = None,
    ) -> dict[str, Any]:
        """Store and queue one scan (an image, a PDF or a TIFF), or a list of them as one batch:
        ``{"batch_id", "document_id", "document_ids", ...}``. ``filename`` names bytes given alone;
        ``review_threshold``: a document with a field below it ends ``needs_review``."""
        if isinstance(scans, list | tuple):
            parts = [self._part(scan, None) for scan in scans]
        else:
            parts = [self._part(cast("str | Path | bytes", scans), filename)]
        form = {"callback_url": callback_url, "review_threshold": review_threshold}
        data = {key: str(value) for key, value in form.items() if value is not None} or None
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return dict(self._call("POST", "/v1/documents", files=parts, data=data, headers=headers))

    def read(
        self, scan: str | Path | bytes, *, filename: str | None = None, wait_s: float | None = None
    ) -> dict[str, Any]:
        """Read one small scan while waiting (``POST /v1/read``): ``{"status", "pages": [...]}``; when
        it took longer than the wait, ``status`` is ``accepted`` and ``document_id`` says where to look."""
        params = {"wait_s": wait_s} if wait_s else None
        return dict(self._call("POST", "/v1/read", files=[self._part(scan, filename)], params=params))

    def submit(
        self, uris: Sequence[str], *, callback_url: str | None = None, review_threshold: float | None = None
    ) -> dict[str, Any]:
        """Queue scans already in the object store (or one prefix ending in ``/``): the batch."""
        body: dict[str, Any] = {"uris": list(uris)}
        if callback_url:
            body["callback_url"] = callback_url
        if review_threshold is not None:
            body["review_threshold"] = review_threshold
        return dict(self._call("POST", "/v1/batches", json=body))

    def batch(self, batch_id: str) -> dict[str, Any]:
        """A batch: ``status`` (``finished`` once every document ended) and ``counts``."""
        return dict(self._call("GET", f"/v1/batches/{batch_id}"))

    def document(self, document_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/documents/{document_id}"))

    def wait(
        self, batch_id: str, *, timeout_s: float | None = None, poll_s: float = 1.0, progress: bool = True
    ) -> dict[str, Any]:
        """Poll the batch until it is ``finished`` (or ``failed``); its last state. ``progress`` shows the
        documents ended so far (a bar on a terminal, lines otherwise); past ``timeout_s``, TimeoutError."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        batch = self.batch(batch_id)
        with Progress(f"batch {batch_id[:8]}", total=batch["total"], enabled=progress) as shown:
            while True:
                ended = sum(batch["counts"].get(key, 0) for key in ("done", "failed", "needs_review"))
                shown.set_total(batch["total"])
                shown.advance(ended - shown.done)
                if batch["status"] in ("finished", "failed"):
                    return batch
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(
                        f"batch {batch_id} not finished after {timeout_s:g} s: {batch['counts']}"
                    )
                time.sleep(poll_s)
                batch = self.batch(batch_id)

    def results(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """Every document of the batch with its fields, in URI then page order (all pages of results)."""
        offset = 0
        while True:
            page = self._call(
                "GET", f"/v1/batches/{batch_id}/results", params={"limit": PAGE, "offset": offset}
            )
            yield from page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return

    def search(
        self, field: str, value: str, *, match: str = "exact", case_sensitive: bool = True
    ) -> Iterator[dict[str, Any]]:
        """Documents whose ``field`` matches ``value`` (``match``: exact or prefix), oldest first."""
        offset: int | None = 0
        while offset is not None:
            params = {
                "field": field,
                "value": value,
                "match": match,
                "case_sensitive": str(case_sensitive).lower(),
                "limit": PAGE,
                "offset": offset,
            }
            page = self._call("GET", "/v1/search", params=params)
            yield from page["items"]
            offset = page["next_offset"]

    def reviews(self) -> Iterator[dict[str, Any]]:
        """Documents waiting for review (``needs_review``), oldest first (an API or a reviewer key)."""
        offset: int | None = 0
        while offset is not None:
            page = self._call("GET", "/v1/reviews", params={"limit": PAGE, "offset": offset})
            yield from page["reviews"]
            offset = page["next_offset"]

    def review(self, document_id: str, fields: Sequence[tuple[str, str]]) -> dict[str, Any]:
        """Send a document's values as they should read, every field of its reading as ``(key path,
        value)``, edited or not: stored beside the model's reading; the document ends ``done``."""
        body = {"fields": [{"name": name, "value": value} for name, value in fields]}
        return dict(self._call("POST", f"/v1/reviews/{document_id}", json=body))


def verify(secret: str | bytes, headers: Any, body: bytes, *, now: float | None = None) -> bool:
    """Whether a completion webhook's POST is genuine: its ``X-DonutHole-Signature`` is the HMAC of its
    ``X-DonutHole-Timestamp`` and raw ``body`` with ``secret``, and that timestamp is within five minutes.
    ``headers``: any mapping with ``.get`` (a web framework's request headers)."""
    key = secret.encode() if isinstance(secret, str) else secret
    timestamp = headers.get(TIMESTAMP_HEADER) or headers.get(TIMESTAMP_HEADER.lower()) or ""
    signature = headers.get(SIGNATURE_HEADER) or headers.get(SIGNATURE_HEADER.lower()) or ""
    return _verify(
        key, timestamp=timestamp, body=body, signature=signature, now=time.time() if now is None else now
    )
