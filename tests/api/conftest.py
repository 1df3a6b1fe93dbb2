"""API fixtures: the app on a migrated database (SQLite and PostgreSQL), a real Redis broker, moto S3.

One database per backend serves the whole session (migrations run once); tests keep apart by creating
their own batches and documents. Messages go to a queue named for this session in Redis (db
``DONUT_HOLE_TEST_REDIS_DB``, default 11), so tests can count them with ``LLEN`` and nothing else reads them.
No worker runs.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from donut_hole.api import create_app
from donut_hole.db import make_engine, session_factory
from donut_hole.db.migrate import upgrade
from donut_hole.settings import Settings

API_KEY = "test-key-" + "x" * 24
OTHER_KEY = "second-key-" + "y" * 24
REDIS_DB = int(os.environ.get("DONUT_HOLE_TEST_REDIS_DB", "11"))
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
MAX_IMAGE_BYTES = 64 * 1024  # small, so that the 413 tests send little


@pytest.fixture(scope="session")
def redis_client() -> Any:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}", pytrace=False)
    return client


@pytest.fixture(scope="session")
def queue(redis_client: Any) -> Iterator[str]:
    """A queue name of this test session; its Redis keys are deleted at the end."""
    name = f"api-test-{uuid.uuid4().hex[:12]}"
    yield name
    for key in redis_client.scan_iter(match=f"*{name}*"):
        redis_client.delete(key)


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database: a SQLite file, or a fresh schema in the session's PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('api-db') / 'api.sqlite3'}"
        upgrade(url)
        yield url
        return
    base = make_url(request.getfixturevalue("postgres_url"))
    schema = f"api_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    upgrade(url)
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def make_settings(tmp: Path, **overrides: Any) -> Settings:
    """Every setting a test depends on is explicit, so that no DONUT_HOLE_* variable of the shell leaks in."""
    values: dict[str, Any] = {
        "data_dir": tmp,
        "database_url": f"sqlite:///{tmp / 'api.sqlite3'}",
        "storage_url": str(tmp / "store"),
        "s3_endpoint_url": None,
        "allowed_buckets": [],
        "queue": f"api-test-other-{uuid.uuid4().hex[:12]}",
        "broker_url": REDIS_URL,
        "api_keys": [API_KEY, OTHER_KEY],
        "max_image_bytes": MAX_IMAGE_BYTES,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture(scope="session")
def settings_factory(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``settings_factory(**overrides)``: test settings in a fresh data directory (SQLite, Redis broker)."""
    return lambda **overrides: make_settings(tmp_path_factory.mktemp("api-other"), **overrides)


@pytest.fixture(scope="session")
def settings(
    database_url: str,
    queue: str,
    s3_server: str,
    s3_bucket: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    return make_settings(
        tmp_path_factory.mktemp("api-data"),
        database_url=database_url,
        storage_url=f"s3://{s3_bucket}/api-store",
        s3_endpoint_url=s3_server,
        allowed_buckets=["scans-allowed"],  # plus the store's own bucket, which is always readable
        queue=queue,
    )


@pytest.fixture(scope="session")
def client(settings: Settings) -> Iterator[TestClient]:
    """A client of the app, its lifespan running (engine made at startup, disposed at the end)."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="session")
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on the app's database, for arranging rows and checking what the API wrote."""
    engine = make_engine(database_url)
    yield session_factory(engine)
    engine.dispose()


def queued_tasks(redis_client: Any, queue: str) -> list[tuple[str, list[Any]]]:
    """``(task name, args)`` of every message waiting in ``queue``, oldest first."""
    tasks = []
    for raw in reversed(redis_client.lrange(queue, 0, -1)):
        message = json.loads(raw)
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, _kwargs, _embed = json.loads(body)
        tasks.append((message["headers"]["task"], args))
    return tasks


@pytest.fixture(scope="session")
def messages(redis_client: Any, queue: str) -> Any:
    """``messages()`` → ``(task name, args)`` of the messages waiting in this session's queue."""
    return lambda: queued_tasks(redis_client, queue)
