"""``Idempotency-Key``: a client that sends a request again (its answer was lost) gets the first batch back.

``POST /v1/batches`` and ``POST /v1/documents`` take an optional ``Idempotency-Key`` header: 1 to 255 visible
ASCII characters, e.g. a UUID the client makes once per request and sends again with each retry of it.

- The first request with a key makes its batch and records the key with it, in the same transaction.
- The same key with the same request gets that batch back (202, the usual body, ``Idempotent-Replayed:
  true``) and queues nothing: no second batch, no document read twice.
- Two requests racing with one key: one batch commits, the other request gets it back.
- The same key with another request (other URIs, another file, another callback) is a 422: a client bug,
  answered without showing what the first request was.
- An upload the object store refused (502/503) frees its key: nothing usable came of it, and its retry
  has to store the scan (the batches route has no such case: a broker outage leaves rows the watchdog
  sends, so its retry rightly gets that batch back).

A key belongs to the API key that sent it (two clients may use the same string) and is stored only as a
digest of both. It lasts as long as its batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Header, HTTPException, Response
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from donut_hole.api.deps import bearer_scheme
from donut_hole.db import repository

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_CHARS = 255
REUSED_DETAIL = (
    "this Idempotency-Key was already sent with another request; send a new key with each new request"
)

T = TypeVar("T")


def client_key(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            description="Optional. The same value on a retry of this request returns the batch the first "
            "try made instead of queuing a second one (1-255 visible ASCII characters, e.g. a UUID).",
        ),
    ] = None,
) -> str | None:
    """The digest under which this client's ``Idempotency-Key`` is stored; None without the header.

    Runs after the router's key check, so ``credentials`` is a configured API key here."""
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_CHARS or not all("!" <= c <= "~" for c in key):
        raise HTTPException(
            422, detail=f"{HEADER} must be 1 to {MAX_KEY_CHARS} visible ASCII characters, without spaces"
        )
    client = credentials.credentials if credentials is not None else ""
    return digest(client.encode(), key.encode())


ClientKeyDep = Annotated[str | None, Depends(client_key)]


def digest(*parts: bytes | str | None) -> str:
    """sha256 of ``parts``, each length-prefixed (no two different lists of parts give the same input)."""
    hasher = hashlib.sha256()
    for part in parts:
        data = b"\xff" if part is None else part.encode() if isinstance(part, str) else part
        hasher.update(len(data).to_bytes(8, "big") + data)
    return hasher.hexdigest()


def claim(key_sha256: str | None, *request: bytes | str | None) -> repository.Idempotency | None:
    """What a request stores with its batch: its key's digest and a digest of what it asked for."""
    return None if key_sha256 is None else repository.Idempotency(key_sha256, digest(*request))


def earlier_batch(session: Session, claim: repository.Idempotency | None) -> str | None:
    """The batch an earlier request with this key made; None for a new key; 422 for another request."""
    if claim is None:
        return None
    row = repository.find_idempotent(session, key_sha256=claim.key_sha256)
    if row is None:
        return None
    if row.request_sha256 != claim.request_sha256:
        raise HTTPException(422, detail=REUSED_DETAIL)
    return row.batch_id


def submit_once(
    session: Session,
    claim: repository.Idempotency | None,
    response: Response,
    *,
    submit: Callable[[], T],
    replay: Callable[[str], T],
) -> T:
    """``submit()`` the request, or ``replay(batch_id)`` the batch an earlier try with its key made,
    including one that committed while this request was writing its own (that one is rolled back)."""
    batch_id = earlier_batch(session, claim)
    if batch_id is None:
        try:
            return submit()
        except IntegrityError:
            if claim is None:
                raise
            session.rollback()
            batch_id = earlier_batch(session, claim)
            if batch_id is None:  # not the key's doing
                raise
    response.headers[REPLAYED_HEADER] = "true"
    return replay(batch_id)
