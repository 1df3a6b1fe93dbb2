"""A webhook receiver on loopback: a real HTTP server that records each POST and answers as told."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import socket
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


@dataclass
class Exchange:
    path: str
    started: float
    ended: float | None = None


class RawReceiver:
    """A receiver that misbehaves on purpose, written on raw sockets: it reads each request whole, then
    answers as its path says.

    ``/ok``: a complete 200 with a body; ``/trickle``: a 200 status line one byte every ``pace_s``, never
    finished; ``/hang``: nothing, until the client goes; ``/half``: a 200 that announces 100 bytes, sends 5
    and closes; ``/redirect``: a 307 to a host outside any allow-list. ``exchanges`` records when each
    connection's request arrived and when the connection ended."""

    def __init__(self, *, pace_s: float = 0.5) -> None:
        self.pace_s = pace_s
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, name="raw-receiver", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next(
                (
                    int(v)
                    for k, _, v in (h.partition(":") for h in lines[1:])
                    if k.lower() == "content-length"
                ),
                0,
            )
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                body += chunk
            path = lines[0].split(" ")[1]
            exchange = Exchange(path, time.monotonic())
            with self._lock:
                self.exchanges.append(exchange)
            try:
                self._answer(conn, path)
            except OSError:
                pass
            finally:
                exchange.ended = time.monotonic()

    def _answer(self, conn: socket.socket, path: str) -> None:
        if path.endswith("/ok"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        elif path.endswith("/trickle"):
            conn.settimeout(self.pace_s)
            for byte in itertools.cycle(b"HTTP/1.1 200 OK\r\n"):
                conn.sendall(bytes([byte]))
                if self._gone(conn):
                    return
        elif path.endswith("/hang"):
            conn.settimeout(0.2)
            while not self._gone(conn):
                pass
        elif path.endswith("/half"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello")
            conn.shutdown(socket.SHUT_WR)
        elif path.endswith("/redirect"):
            conn.sendall(
                b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://elsewhere.example/x\r\n"
                b"Content-Length: 0\r\n\r\n"
            )

    def _gone(self, conn: socket.socket) -> bool:
        """Wait for the client for the socket's timeout: whether it went (or this receiver closes)."""
        if self._closed.is_set():
            return True
        try:
            return not conn.recv(1)
        except TimeoutError:
            return False

    def of(self, path: str) -> list[Exchange]:
        with self._lock:
            return [e for e in self.exchanges if e.path == path]

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
