"""Dependencies of the routes: settings, the app's services, a database session per request, the key check.

The app's :class:`~donut_hole.services.Services` (engine and sessions, object store, Celery app) are made
once, in its lifespan (:mod:`donut_hole.api.main`), and kept on ``app.state``; a request borrows a session
from them and gives it back when it ends. Routes that queue work pass that session to
:mod:`donut_hole.worker.enqueue`, so the rows are written and committed through it.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator, Sequence
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from donut_hole.db import session_scope
from donut_hole.services import Services
from donut_hole.settings import Settings

NO_KEYS_DETAIL = "the server has no API keys configured (DONUT_HOLE_API_KEYS); it refuses every request"
BAD_KEY_DETAIL = "missing or invalid API key: send 'Authorization: Bearer <key>'"


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_db(services: ServicesDep) -> Iterator[Session]:
    """A session for this request: committed when the route returns, rolled back when it raises."""
    with session_scope(services.sessions) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]

bearer_scheme = HTTPBearer(
    auto_error=False,  # absent or malformed credentials reach require_api_key, which answers 401 itself
    scheme_name="ApiKey",
    description="One of the keys in DONUT_HOLE_API_KEYS, sent as 'Authorization: Bearer <key>'.",
)


def usable_keys(keys: Sequence[str]) -> list[str]:
    """The configured keys that can be presented (empty strings never match)."""
    return [key for key in keys if key]


def key_matches(presented: str, keys: Sequence[str]) -> bool:
    """Whether ``presented`` equals one of ``keys``, compared in constant time against every key."""
    presented_bytes = presented.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(presented_bytes, key.encode())
    return found


def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> None:
    """401 unless the request carries ``Authorization: Bearer <key>`` with a configured key.

    With no keys configured every request is refused (the app logs a warning at startup): an API open to
    anyone has to be a deliberate change to this function, not a missing environment variable.
    """
    keys = usable_keys(settings.api_keys)
    if not keys:
        raise HTTPException(401, detail=NO_KEYS_DETAIL, headers={"WWW-Authenticate": "Bearer"})
    if credentials is None or not key_matches(credentials.credentials, keys):
        raise HTTPException(401, detail=BAD_KEY_DETAIL, headers={"WWW-Authenticate": "Bearer"})


ApiKeyDep = Depends(require_api_key)


REVIEWER = "api"
"""Who a correction made with a full API key is recorded as."""


def reviewer_of(presented: str, settings: Settings) -> str | None:
    """The name behind a key that may review: ``api`` for a full API key, the name of a reviewer key
    (``DONUT_HOLE_REVIEWER_KEYS``, ``name:key``), or None. Compared in constant time against every key."""
    if key_matches(presented, usable_keys(settings.api_keys)):
        return REVIEWER
    found: str | None = None
    for entry in settings.reviewer_keys:
        name, sep, key = entry.partition(":")
        name, key = (name.strip() or "reviewer", key) if sep else ("reviewer", entry)
        if key and hmac.compare_digest(presented.encode(), key.encode()) and found is None:
            found = name
    return found


def require_reviewer(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> str:
    """401 unless the request carries an API key or a reviewer key; the reviewer's name."""
    if not usable_keys(settings.api_keys) and not settings.reviewer_keys:
        raise HTTPException(401, detail=NO_KEYS_DETAIL, headers={"WWW-Authenticate": "Bearer"})
    who = reviewer_of(credentials.credentials, settings) if credentials is not None else None
    if who is None:
        raise HTTPException(401, detail=BAD_KEY_DETAIL, headers={"WWW-Authenticate": "Bearer"})
    return who


ReviewerDep = Annotated[str, Depends(require_reviewer)]
