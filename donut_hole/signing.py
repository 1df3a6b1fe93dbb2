"""The completion webhook's signature: what the workers sign with and what receivers check.

``X-DonutHole-Signature: sha256=<hex>`` is the HMAC-SHA256 with ``DONUT_HOLE_CALLBACK_SECRET`` of
``b"<X-DonutHole-Timestamp>." + raw body``. Standard library only: a receiver needs nothing else of the
package (``from donut_hole.signing import verify``, also ``donut_hole.client.verify``).
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-DonutHole-Signature"
TIMESTAMP_HEADER = "X-DonutHole-Timestamp"


def sign(secret: bytes, *, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``b"<timestamp>." + body`` with ``secret``.

    >>> sign(b"key", timestamp=1700000000, body=b"{}")
    'sha256=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae'
    """
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(
    secret: bytes, *, timestamp: str, body: bytes, signature: str, now: float, tolerance_s: float = 300.0
) -> bool:
    """What a receiver checks: the signature matches and the timestamp is within ``tolerance_s`` of now."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs(now - sent) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp=sent, body=body), signature)
