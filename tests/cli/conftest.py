"""CLI fixtures: the embedded defaults (SQLite, a local store, no servers) in a fresh data directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from donut_hole.db import migrate
from donut_hole.settings import Settings, get_settings


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings of ``tmp_path`` as the data directory, migrated; no DONUT_HOLE_* of the shell leaks in."""
    for name in ("DATABASE_URL", "BROKER_URL", "STORAGE_URL", "S3_ENDPOINT_URL"):
        monkeypatch.delenv(f"DONUT_HOLE_{name}", raising=False)
    monkeypatch.setenv("DONUT_HOLE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DONUT_HOLE_MAX_IMAGE_BYTES", "2048")
    get_settings.cache_clear()
    settings = get_settings()
    migrate.upgrade(settings.database_url)
    yield settings
    get_settings.cache_clear()
