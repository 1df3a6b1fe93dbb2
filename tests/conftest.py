"""Shared fixtures: a throw-away PostgreSQL database and a moto S3 server on loopback, one per test session.

PostgreSQL is required, never skipped: when it cannot be reached the tests that use it fail and say how to
point them at a server (``DONUT_HOLE_TEST_POSTGRES_ADMIN_URL``).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import settings as hypothesis_settings

# Property tests draw the same examples on every run (derandomized): the suite passes or fails the same way
# every time; a new example set comes with a change of the tests, not of the clock.
hypothesis_settings.register_profile("donut-hole", derandomize=True)
hypothesis_settings.load_profile("donut-hole")

# Fixtures that reach a service (PostgreSQL, Redis, moto's S3 server, worker processes, the compose
# parser): a test that uses one, or runs on the postgresql parameter, is marked ``services`` here, so
# ``make test-fast`` (``-m "not services and not slow"``) runs what needs nothing but this checkout.
SERVICE_FIXTURES = frozenset(
    {
        "postgres_url",
        "redis_url",
        "redis_client",
        "queue",
        "messages",
        "s3_server",
        "s3_bucket",
        "pipeline_settings",
        "shared_worker",
        "start_worker",
        "compose_config",
        "empty_env_file",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        if names & SERVICE_FIXTURES or "postgresql" in params.values():
            item.add_marker(pytest.mark.services)


POSTGRES_ADMIN_URL = os.environ.get(
    "DONUT_HOLE_TEST_POSTGRES_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh, uniquely named PostgreSQL database, dropped at the end of the session."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    admin_url = make_url(POSTGRES_ADMIN_URL)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"donut_hole_test_{uuid.uuid4().hex[:12]}"
    reason = None
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        reason = str(exc.orig).strip()
        admin.dispose()
    if reason is not None:
        pytest.fail(
            f"PostgreSQL is not reachable at {admin_url.render_as_string(hide_password=True)}: {reason}\n"
            "Start it (docker compose up -d postgres) or set DONUT_HOLE_TEST_POSTGRES_ADMIN_URL to a server "
            "where this user may CREATE DATABASE.",
            pytrace=False,
        )
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Endpoint URL of a moto S3 server on 127.0.0.1, with dummy credentials in the environment."""
    from moto.server import ThreadedMotoServer

    fake = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {key: os.environ.get(key) for key in [*fake, "AWS_SESSION_TOKEN", "AWS_PROFILE"]}
    os.environ.update(fake)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def s3_bucket(s3_server: str) -> str:
    """Name of an empty bucket on the moto server; tests keep apart by using their own key prefixes."""
    from donut_hole.storage import make_s3_client

    name = f"test-{uuid.uuid4().hex[:12]}"
    make_s3_client(endpoint_url=s3_server).create_bucket(Bucket=name)
    return name
