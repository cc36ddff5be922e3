"""/v1/search: full-text search over the caller's conversations."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from serve.deps import Caller, Ctx
from serve.problems import problems
from warbler.protocol import (
    INT64_MAX,
    SEARCH_LIMIT_DEFAULT,
    SEARCH_LIMIT_MAX,
    SEARCH_QUERY_MAX,
    SearchPagePublic,
)

router = APIRouter(tags=["search"], responses=problems(401, 422, 429, 503))


@router.get("/search")
async def search(
    ctx: Ctx,
    caller: Caller,
    q: Annotated[str, Query(min_length=1, max_length=SEARCH_QUERY_MAX, pattern=r"^[^\x00]*$")],
    conversation_id: Annotated[int | None, Query(ge=1, le=INT64_MAX)] = None,
    limit: Annotated[int, Query(ge=1, le=SEARCH_LIMIT_MAX)] = SEARCH_LIMIT_DEFAULT,
    before: Annotated[str | None, Query(max_length=64)] = None,
) -> SearchPagePublic:
    """Text messages holding every word of ``q``, newest first, in the conversations the
    caller belongs to now (only ``conversation_id`` if given); ``before`` is a page's ``next``."""
    return await ctx.search.search(
        caller.user_id, q, conversation_id=conversation_id, limit=limit, before=before
    )
