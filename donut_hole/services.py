"""One owner per process of the database engine and its sessions, the object store and the Celery app.

A :class:`Services` is built from :class:`~donut_hole.settings.Settings`; each part is made on first use,
and :meth:`~Services.close` (or the end of a ``with`` block) disposes of what was made::

    with Services(settings) as services:
        batch_id = submit_uris(services, uris=["s3://scans/a.jpg"], source="cli")

Who holds one: the API, for its lifetime (made in its lifespan, on ``app.state.services``); a CLI command,
for the command; each worker pool process (:class:`~donut_hole.worker.runtime.Runtime`, which adds the
model) and each worker's watchdog thread, both with the worker's own Celery app. Nothing else makes an
engine, a store client or a Celery app for the pipeline, so nothing is made twice or left open.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from donut_hole.db import make_engine, session_factory
from donut_hole.queue import make_celery
from donut_hole.settings import Settings
from donut_hole.storage import ObjectStore, open_store


class Services:
    """The engine, session factory, object store and Celery app of ``settings``, each made once.

    ``celery``: an app made elsewhere (a worker's own) to use instead of making one; it is not closed
    here. ``engine_options`` go to :func:`~donut_hole.db.session.make_engine`.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        celery: Celery | None = None,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self._engine_options = dict(engine_options or {})
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._store: ObjectStore | None = None
        self._celery = celery
        self._owns_celery = celery is None
        self._lock = threading.RLock()  # the API makes the parts lazily from several request threads

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = make_engine(self.settings.database_url, **self._engine_options)
            return self._engine

    @property
    def sessions(self) -> sessionmaker[Session]:
        """The session factory on :attr:`engine`; use it with ``session_scope(services.sessions)``."""
        with self._lock:
            if self._sessions is None:
                self._sessions = session_factory(self.engine)
            return self._sessions

    @property
    def store(self) -> ObjectStore:
        """The object store; a malformed ``storage_url`` raises ``storage.InvalidLocation``."""
        with self._lock:
            if self._store is None:
                s = self.settings
                self._store = open_store(s.storage_url, endpoint_url=s.s3_endpoint_url, region=s.s3_region)
            return self._store

    @property
    def celery(self) -> Celery:
        with self._lock:
            if self._celery is None:
                self._celery = make_celery(self.settings)
            return self._celery

    def close(self) -> None:
        """Dispose of the engine and close the broker connections of a Celery app made here."""
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine, self._sessions = None, None
            if self._celery is not None and self._owns_celery:
                self._celery.close()
                self._celery = None

    def __enter__(self) -> Services:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
