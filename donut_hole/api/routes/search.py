"""``/v1/search``: documents whose extracted field equals a value."""

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
    value: Annotated[str, Query(max_length=4096, description="The exact value (case-sensitive).")],
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> SearchResult:
    """Documents with an extracted ``field`` equal to ``value`` (exact match on the indexed pair).

    Values are compared as stored in the search table, clipped to their first 512 characters.
    """
    documents = repository.search_fields(session, name=field, value=value, limit=limit)
    return SearchResult(
        field=field, value=value, items=documents_public(session, documents=documents, settings=settings)
    )
