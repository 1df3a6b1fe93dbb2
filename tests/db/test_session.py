"""Engine configuration and the transaction helper."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from donut_hole.db import Batch, make_engine, normalize_url, repository, session_scope


def test_sqlite_engine_uses_wal_foreign_keys_and_a_busy_timeout(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.sqlite3'}")
    with engine.connect() as connection:
        assert connection.scalar(text("PRAGMA journal_mode")) == "wal"
        assert connection.scalar(text("PRAGMA foreign_keys")) == 1
        assert connection.scalar(text("PRAGMA busy_timeout")) == 30_000
    engine.dispose()


def test_in_memory_sqlite_is_one_shared_database() -> None:
    engine = make_engine("sqlite://")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (x INTEGER)"))
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM t")) == 0


def test_postgresql_urls_get_psycopg_and_pre_ping() -> None:
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    assert make_engine("postgresql://u@127.0.0.1:1/db").pool._pre_ping  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="unsupported database URL"):
        make_engine("mysql://u@h/db")


def test_session_scope_commits_or_rolls_back(engine: Engine, factory: sessionmaker[Session]) -> None:
    with session_scope(factory) as session:
        repository.create_batch(session, source="kept", uris=["s3://a/1"])
    with pytest.raises(RuntimeError), session_scope(factory) as session:
        repository.create_batch(session, source="lost", uris=["s3://a/2"])
        raise RuntimeError("boom")
    with session_scope(factory) as session:
        assert session.scalars(select(Batch.source)).all() == ["kept"]
        assert session.scalar(select(func.count()).select_from(Batch)) == 1
