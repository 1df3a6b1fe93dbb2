"""The completion webhook: one signed POST per batch, once it has no queued or processing document left.

A batch may carry a ``callback_url`` (API and CLI), checked against ``DONUT_HOLE_CALLBACK_ALLOWED_URLS``
when it is submitted (:func:`check_callback_url`). The flow, outside any forward pass::

    a group is stored     notify_finished: finished batches waiting → due, one delivery message each, on
                          the callbacks queue (``cpu.callbacks``), which every worker also consumes, in
                          threads of its main process (:mod:`.sender`), never in its document pool
    a sender thread       deliver: count the try and take a lease longer than its deadline, POST (one
                          deadline for all of it), record it: delivered, a later try, failed
    every worker's        recover: finished batches no group saw (all files refused at enqueue, an empty
    watchdog              prefix), and due ones whose message was lost (a worker died, the broker was down)

Delivery is at least once: the state is in ``batches.callback_*`` (:mod:`donut_hole.db.callbacks`), a try
that fails is tried again with exponential backoff (capped at ``callback_backoff_max_s``) up to
``callback_max_attempts`` tries, and a delivered callback is never sent again. A receiver may still see a
second POST for a batch (a worker lost between the receiver's answer and the record of it): the
``X-DonutHole-Batch`` header and the body's ``batch_id`` let it ignore repeats.

The request: ``POST`` with a JSON body (:func:`payload`) and the headers ``X-DonutHole-Timestamp: <unix
seconds>`` and ``X-DonutHole-Signature: sha256=<hex>``, the HMAC-SHA256 with ``DONUT_HOLE_CALLBACK_SECRET``
of ``b"<timestamp>." + body`` (:func:`~donut_hole.signing.sign`; receivers check it with
:func:`~donut_hole.signing.verify`). Redirects are not followed (they could leave the allow-list); any
answer but a complete 2xx (its whole body, within the deadline) is a failed try.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import threading
import time
from datetime import timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

from donut_hole.db import callbacks as callback_rows
from donut_hole.db import repository, session_scope
from donut_hole.db.models import Batch, CallbackStatus, utcnow
from donut_hole.logs import log_event
from donut_hole.queue import TASK_CALLBACK, callback_queue
from donut_hole.services import Services
from donut_hole.settings import Settings
from donut_hole.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

log = logging.getLogger("donut_hole.webhook")

EVENT = "batch.finished"
MAX_URL_CHARS = 2048
LEASE_GRACE_S = 10.0
_READ_CHUNK = 64 * 1024


class CallbackNotAllowed(ValueError):
    """A callback URL this server will not call; the message names the setting, never the URL or hosts."""


# ------------------------------------------------------------------------------------------------ the URL


def url_allowed(url: str, allowed: list[str]) -> bool:
    """Whether ``url`` is an http(s) URL under one of the ``allowed`` entries.

    An entry is a URL prefix (scheme, host, port and a path prefix matched on whole segments) or a bare
    host name (any http or https URL on that host, any port). URLs with credentials, ``.``/``..`` path
    segments or control characters are never allowed.

    >>> url_allowed("https://hooks.example.com/donut/b1", ["https://hooks.example.com/donut"])
    True
    >>> url_allowed("https://hooks.example.com/donutx", ["https://hooks.example.com/donut"])
    False
    >>> url_allowed("https://hooks.example.com.evil.io/", ["hooks.example.com"])
    False
    """
    if len(url) > MAX_URL_CHARS or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        return False
    try:
        parts = urlsplit(url)
        port = parts.port or _default_port(parts.scheme)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return False
    if any(segment in (".", "..") for segment in unquote(parts.path).split("/")):
        return False
    host = parts.hostname.lower()
    for entry in allowed:
        if "://" not in entry:
            name, _, entry_port = entry.lower().partition(":")
            if host == name and (not entry_port or entry_port == str(port)):
                return True
            continue
        try:
            rule = urlsplit(entry)
            rule_port = rule.port or _default_port(rule.scheme)
        except ValueError:
            continue
        if (rule.scheme, (rule.hostname or "").lower(), rule_port) != (parts.scheme, host, port):
            continue
        prefix = rule.path.rstrip("/")
        if not prefix or parts.path == prefix or parts.path.startswith(prefix + "/"):
            return True
    return False


def _default_port(scheme: str) -> int | None:
    return {"http": 80, "https": 443}.get(scheme)


def check_callback_url(settings: Settings, url: object) -> str:
    """``url`` when this server may call it, else :class:`CallbackNotAllowed` (the API answers 422)."""
    if not isinstance(url, str) or not url:
        raise CallbackNotAllowed("callback_url must be a non-empty string")
    if settings.callback_secret is None or not settings.callback_secret.get_secret_value():
        raise CallbackNotAllowed("callbacks are off on this server (DONUT_HOLE_CALLBACK_SECRET is not set)")
    if not settings.callback_allowed_urls:
        raise CallbackNotAllowed(
            "callbacks are off on this server (DONUT_HOLE_CALLBACK_ALLOWED_URLS is empty)"
        )
    if not url_allowed(url, settings.callback_allowed_urls):
        raise CallbackNotAllowed(
            "callback_url is not allowed: it must be an http(s) URL under one of the prefixes or hosts of "
            "DONUT_HOLE_CALLBACK_ALLOWED_URLS, without credentials"
        )
    return url


# -------------------------------------------------------------------------------------- body and signature


def payload(batch: Batch, *, counts: dict[str, int], settings: Settings, attempt: int) -> bytes:
    """The body: event, batch id and status, counts per document status, the results link, the try."""
    results = f"/v1/batches/{batch.id}/results"
    body: dict[str, Any] = {
        "event": EVENT,
        "batch_id": batch.id,
        "status": repository.batch_state(batch.status, counts),
        "counts": counts,
        "results_url": settings.public_url.rstrip("/") + results if settings.public_url else results,
        "attempt": attempt,
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


# ------------------------------------------------------------------------------------------------- sending


def post(url: str, *, body: bytes, headers: dict[str, str], timeout_s: float) -> str | None:
    """POST ``body``; ``None`` on a complete 2xx answer, else why not (an HTTP status or what went wrong,
    without the URL).

    ``timeout_s`` bounds the whole exchange (connect, send, the status line, the headers and the whole body),
    not each socket read: a receiver that answers a byte at a time is cut off at the deadline like one that
    never answers. An answer counts only once its body arrived whole (its ``Content-Length`` or last chunk):
    a receiver that closes mid-answer made a failed try. A 3xx answer is a failed try (never followed: the
    new address could leave the allow-list).
    """
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname or "", parts.port, timeout=timeout_s)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    expired = threading.Event()
    late = f"no complete answer within {timeout_s:g} s"

    def cut() -> None:  # at the deadline: end whatever read or write is waiting on the socket
        expired.set()
        sock = connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    deadline = threading.Timer(timeout_s, cut)
    deadline.daemon = True
    deadline.start()
    try:
        connection.connect()
        if expired.is_set():  # the deadline passed while connecting: nothing was sent
            cut()
            raise TimeoutError
        connection.request("POST", target, body=body, headers={**headers, "Connection": "close"})
        response = connection.getresponse()
        while response.read(_READ_CHUNK):  # the whole body
            pass
        if response.length:  # bytes announced by Content-Length that never came (read(n) does not raise)
            raise http.client.IncompleteRead(b"", response.length)
        status = int(response.status)
    except (OSError, ValueError, http.client.HTTPException) as exc:  # TimeoutError is an OSError
        if expired.is_set() or isinstance(exc, TimeoutError):
            return late
        if isinstance(exc, http.client.IncompleteRead):
            return "no complete answer: the connection closed before the end of the answer"
        if isinstance(exc, OSError) and exc.strerror:
            return f"no answer: {exc.strerror}"
        return f"no answer: {type(exc).__name__}"
    finally:
        deadline.cancel()
        connection.close()
    if expired.is_set():  # cut mid-body of an answer that ends when the connection does
        return late
    if 300 <= status < 400:
        return f"HTTP {status} (redirects are not followed)"
    return None if 200 <= status < 300 else f"HTTP {status}"


def backoff_s(attempts: int, *, cap_s: float, base_s: float = 2.0) -> float:
    """Wait before try ``attempts + 1``: ``2 ** attempts`` s, capped. ``backoff_s(3, cap_s=60) = 16.0``."""
    return float(min(cap_s, base_s ** min(attempts, 30)))


def lease_s(settings: Settings) -> float:
    """How long a claimed try keeps others off: longer than its POST may take (``callback_timeout_s`` in
    all), with time for the database writes around it."""
    return settings.callback_timeout_s + LEASE_GRACE_S


def deliver(services: Services, *, batch_id: str) -> float | None:
    """One try of the batch's callback, if one may start now; returns the seconds until the next try, or
    ``None`` (delivered, given up, or nothing to do: another try is under way or it is not due yet)."""
    settings = services.settings
    with session_scope(services.sessions) as session:
        batch = callback_rows.claim(
            session,
            batch_id=batch_id,
            lease_s=lease_s(settings),
            max_attempts=settings.callback_max_attempts,
        )
        if batch is None or not batch.callback_url:
            return None
        url, attempt = batch.callback_url, batch.callback_attempts
        counts = repository.batch_progress(session, batch_id=batch_id)
        body = payload(batch, counts=counts, settings=settings, attempt=attempt)
    secret = settings.callback_secret.get_secret_value().encode() if settings.callback_secret else b""
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "donut-hole-webhook",
        "X-DonutHole-Event": EVENT,
        "X-DonutHole-Batch": batch_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp=timestamp, body=body),
    }
    error = (
        post(url, body=body, headers=headers, timeout_s=settings.callback_timeout_s)
        if url_allowed(url, settings.callback_allowed_urls)  # the allow-list may have shrunk since
        else "the URL is no longer in DONUT_HOLE_CALLBACK_ALLOWED_URLS"
    )
    delay = backoff_s(attempt, cap_s=settings.callback_backoff_max_s)
    with session_scope(services.sessions) as session:
        status = callback_rows.record_try(
            session,
            batch_id=batch_id,
            error=error,
            retry_at=utcnow() + timedelta(seconds=delay),
            max_attempts=settings.callback_max_attempts,
        )
    host = urlsplit(url).hostname
    if status is CallbackStatus.delivered:
        log_event(log, "callback.delivered", batch_id=batch_id, attempt=attempt, host=host)
        return None
    level = logging.ERROR if status is CallbackStatus.failed else logging.WARNING
    event = "callback.gave_up" if status is CallbackStatus.failed else "callback.failed_try"
    log_event(log, event, level=level, batch_id=batch_id, attempt=attempt, host=host, error=error)
    return delay if status is CallbackStatus.due else None


# ------------------------------------------------------------------------------------------- scheduling


def send(services: Services, batch_ids: list[str], *, countdown_s: float | None = None) -> None:
    """One delivery message per batch; a broker error is logged (the watchdog sends it again)."""
    for batch_id in batch_ids:
        try:
            services.celery.send_task(
                TASK_CALLBACK,
                args=[batch_id],
                queue=callback_queue(services.settings),
                countdown=countdown_s,
            )
        except Exception as exc:  # kombu raises several connection error types
            log_event(log, "callback.unsent", level=logging.WARNING, batch_id=batch_id, error=str(exc))


def notify_finished(
    services: Services, *, document_ids: list[str] | None = None, batch_ids: list[str] | None = None
) -> list[str]:
    """After a group is stored (``document_ids``) or a batch ended without one (``batch_ids``: every file
    refused at enqueue, an empty prefix): those batches that are finished become ``due`` and get a
    delivery message; returns their ids. Never raises (the watchdog looks again)."""
    try:
        with session_scope(services.sessions) as session:
            finished = callback_rows.mark_finished(
                session, document_ids=document_ids or [], batch_ids=batch_ids or []
            )
    except Exception as exc:  # the database is down: the watchdog finds these batches later
        log_event(log, "callback.check_failed", level=logging.WARNING, error=f"{type(exc).__name__}: {exc}")
        return []
    send(services, finished)
    return finished


def recover(services: Services) -> int:
    """The watchdog's look: finished batches still ``waiting`` and ``due`` ones whose message is overdue
    (by ``unsent_after_s`` past their try's time) get a delivery message; returns how many."""
    overdue_before = utcnow() - timedelta(seconds=services.settings.unsent_after_s)
    with session_scope(services.sessions) as session:
        finished = callback_rows.mark_finished(session)
        lost = callback_rows.overdue(session, before=overdue_before)
    batch_ids = sorted(set(finished) | set(lost))
    send(services, batch_ids)
    if lost:
        log_event(log, "callback.resent", batches=len(lost))
    return len(batch_ids)
