"""``/v1/search``: documents whose extracted field equals a value, or starts with it; case-sensitive or
not; paged by ``limit`` and ``offset``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from donut_hole.api.deps import ApiKeyDep, SessionDep, SettingsDep
from donut_hole.api.queries import documents_public
from donut_hole.api.schemas import MAX_PAGE, SearchResult
from donut_hole.db import repository
from donut_hole.db.models import FIELD_NAME_MAX

router = APIRouter(prefix="/v1/search", tags=["search"], dependencies=[ApiKeyDep])


@router.get("")
def search(
    session: SessionDep,
    settings: SettingsDep,
    field: Annotated[
        str, Query(min_length=1, max_length=FIELD_NAME_MAX, description='A key path: "consignee.name".')
    ],
    value: Annotated[str, Query(max_length=4096, description="The value, or its beginning (match=prefix).")],
    match: Annotated[
        repository.SearchMatch,
        Query(description="exact: the whole value; prefix: values that start with it."),
    ] = "exact",
    case_sensitive: Annotated[bool, Query(description="false: compare in lower case.")] = True,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="Skip this many matches first.")] = 0,
) -> SearchResult:
    """Documents with an extracted ``field`` equal to ``value`` (``match=exact``, the indexed pair) or
    starting with it (``match=prefix``), case-sensitive by default; oldest first, ``limit`` of them after
    ``offset``. ``next_offset`` is where the next page starts, or null after the last one.

    Values are compared as stored in the search table, clipped to their first 512 characters.
    """
    documents = repository.search_fields(
        session,
        name=field,
        value=value,
        limit=limit + 1,  # one more: whether a next page exists
        offset=offset,
        match=match,
        case_sensitive=case_sensitive,
    )
    more = len(documents) > limit
    return SearchResult(
        field=field,
        value=value,
        match=match,
        case_sensitive=case_sensitive,
        offset=offset,
        next_offset=offset + limit if more else None,
        items=documents_public(session, documents=documents[:limit], settings=settings),
    )
