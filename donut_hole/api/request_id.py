"""A request id for every request: read from ``X-Request-ID`` when the client sent a sane one, else made.

It is kept in ``request.state.request_id``, sent back in the ``X-Request-ID`` header, and written with every
error the API logs, so that a client quoting it finds the details that its error body leaves out.
"""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-request-id"
_SANE = re.compile(r"[A-Za-z0-9._-]{8,64}")


def request_id_of(request: Request) -> str:
    """The id :class:`RequestId` gave this request ("-" outside it, e.g. in a bare test app)."""
    return str(getattr(request.state, "request_id", "-"))


class RequestId:
    """Pure ASGI middleware: sets ``scope["state"]["request_id"]`` and the response header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope.get("headers", [])).get(HEADER.encode(), b"").decode("latin-1")
        request_id = sent if _SANE.fullmatch(sent) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)
