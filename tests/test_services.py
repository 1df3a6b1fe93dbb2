"""One owner per process: each part is made once, on first use, and closing disposes of what was made."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event, text

from donut_hole.db import session_scope
from donut_hole.queue import make_celery
from donut_hole.services import Services
from donut_hole.settings import Settings
from donut_hole.storage import LocalStore


def test_each_part_is_made_once_and_only_when_used(tmp_path: Path) -> None:
    services = Services(Settings(data_dir=tmp_path))
    assert (services._engine, services._store, services._celery) == (None, None, None)
    assert services.engine is services.engine and services.sessions is services.sessions
    assert services.sessions.kw["bind"] is services.engine
    assert isinstance(services.store, LocalStore) and services.store is services.store
    assert services.celery is services.celery
    assert services.celery.conf.task_default_queue == services.settings.queue
    services.close()


def test_closing_disposes_the_engine_and_keeps_an_app_made_elsewhere(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    worker_app = make_celery(settings)
    disposed: list[object] = []
    with Services(settings, celery=worker_app) as services:
        event.listen(services.engine, "engine_disposed", disposed.append)
        with session_scope(services.sessions) as session:
            assert session.execute(text("SELECT 1")).scalar() == 1
        assert services.celery is worker_app
    assert len(disposed) == 1 and services._engine is None
    assert services._celery is worker_app  # the worker's own app is the worker's to close
    with Services(settings) as owned:
        made = owned.celery
    assert owned._celery is None and made is not worker_app
