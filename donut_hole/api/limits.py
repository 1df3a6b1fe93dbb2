"""Refuse request bodies over a size limit before they are read whole (HTTP 413).

FastAPI reads a multipart body into temporary files before any dependency or route runs, so the upload
limit has to act on the ASGI stream: a declared ``Content-Length`` over the limit is refused at once, and a
body sent without one (chunked) is counted as it arrives and refused when it passes the limit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPART_OVERHEAD_BYTES = 64 * 1024
"""Room for the multipart boundary and part headers around an uploaded scan."""

MAX_JSON_BODY_BYTES = 16 * 1024 * 1024
"""Any other request body: enough for a batch of 10,000 S3 URIs of full length."""


def too_large_detail(limit: int) -> str:
    return f"request body is larger than {limit} bytes"


class BodySizeLimit:
    """Pure ASGI middleware: at most ``limits[(method, path)]`` bytes of body, else ``default`` bytes."""

    def __init__(self, app: ASGIApp, *, default: int, limits: Mapping[tuple[str, str], int]) -> None:
        self.app = app
        self.default = default
        self.limits = dict(limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get((scope["method"], scope["path"]), self.default)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_413(send, limit)
            return
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the route's body parsing; FastAPI re-raises HTTPExceptions from there and
                    # its exception handler answers {"detail": ...}.
                    raise HTTPException(413, detail=too_large_detail(limit))
            return message

        await self.app(scope, receive_limited, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_413(send: Send, limit: int) -> None:
    body = json.dumps({"detail": too_large_detail(limit)}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),  # the unread body is not drained
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
