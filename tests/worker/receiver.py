"""A webhook receiver on loopback: a real HTTP server that records each POST and answers as told."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    answered: int


class Receiver:
    """``http://127.0.0.1:<port>``; ``answers`` are the statuses of the next POSTs, then 200."""

    def __init__(self, *, answers: list[int] | None = None) -> None:
        self.answers = list(answers or [])
        self.received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    status = receiver.answers.pop(0) if receiver.answers else 200
                    headers = {
                        name.lower(): value for name, value in self.headers.items()
                    }  # case-insensitive
                    receiver.received.append(Received(self.path, headers, body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, name="receiver", daemon=True).start()

    def wait_for(self, path: str, *, answered: int = 200, timeout_s: float = 30.0) -> list[Received]:
        """Every POST to ``path`` so far, once one of them was answered ``answered``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                posts = [r for r in self.received if r.path == path]
            if any(r.answered == answered for r in posts):
                return posts
            time.sleep(0.05)
        raise AssertionError(f"no POST to {path} answered {answered} within {timeout_s} s: {self.received}")

    def posts(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def signature_ok(received: Received, secret: bytes) -> bool:
    """The receiver's own check of ``X-DonutHole-Signature`` (written here, not taken from the package)."""
    timestamp = received.headers["x-donuthole-timestamp"]
    expected = hmac.new(secret, timestamp.encode() + b"." + received.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(received.headers["x-donuthole-signature"], f"sha256={expected}")
