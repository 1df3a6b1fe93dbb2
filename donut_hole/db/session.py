"""Engines and sessions: one engine per process, short sessions, one transaction per unit of work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from donut_hole.settings import without_credentials

SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_url(url: str | URL) -> URL:
    """Parse ``url`` and pick the driver this project installs (psycopg 3) for a bare ``postgresql://``."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine for a SQLite or PostgreSQL URL, configured for several worker processes at once.

    SQLite: WAL journal (readers do not block the writer), foreign keys enforced, a busy timeout instead of
    an immediate "database is locked". PostgreSQL: ``pool_pre_ping`` so that a restarted server costs one
    reconnect instead of one failed task. Extra keyword arguments go to :func:`sqlalchemy.create_engine`.
    """
    parsed = normalize_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        if parsed.database in (None, "", ":memory:"):
            # One shared connection, or every new connection would see a different empty database.
            kwargs.setdefault("poolclass", StaticPool)
            connect_args["check_same_thread"] = False
        engine = create_engine(parsed, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if backend == "postgresql":
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(parsed, **kwargs)
    raise ValueError(
        f"unsupported database URL {without_credentials(parsed.render_as_string(hide_password=False))!r}: "
        "use sqlite or postgresql"
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a crash loses at most the last commit
    finally:
        cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit, so rows can be returned from a ``session_scope``."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit when the block ends normally, roll back when it raises, always close.

    >>> with session_scope(factory) as session:  # doctest: +SKIP
    ...     batch = create_batch(session, source="api", uris=["s3://scans/a.png"])
    """
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
