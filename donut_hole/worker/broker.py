"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file, polled every 0.1 s.

kombu's virtual transports look for new messages once per ``polling_interval`` (1 s by default) when a
queue was empty, and its SQLAlchemy transport passes every transport option on to ``create_engine``, so
the interval cannot be set as an option. With one group per pool process in flight, a second of waiting
between groups cost the demo most of its throughput; this subclass only changes the interval.

``sqla+sqlite:///var/broker.sqlite3`` (the settings default) is rewritten to this transport by
:func:`broker_url_for_celery`; other URLs (``redis://``, ``amqp://``, other ``sqla+`` databases) are kept.
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Transport as SQLAlchemyTransport

ALIAS = "donut-hole-sqlite"
POLLING_INTERVAL_S = 0.1


class Transport(SQLAlchemyTransport):
    polling_interval = POLLING_INTERVAL_S


def register() -> None:
    """Make ``donut-hole-sqlite+sqlite:///...`` URLs resolve to :class:`Transport` in this process."""
    TRANSPORT_ALIASES.setdefault(ALIAS, f"{__name__}:Transport")


def broker_url_for_celery(url: str) -> str:
    """``sqla+sqlite:///x`` → ``donut-hole-sqlite+sqlite:///x``; any other URL unchanged."""
    for prefix in ("sqla+sqlite:", "sqlalchemy+sqlite:"):
        if url.startswith(prefix):
            register()
            return f"{ALIAS}+{url.split('+', 1)[1]}"
    return url
