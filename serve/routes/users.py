"""/v1/users and /v1/presence: profiles and look-ups."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from serve.deps import Caller, Ctx
from serve.problems import problems
from serve.routes.params import UserId
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import INT64_MAX, PresencePublic, UserPublic, UserUpdate

router = APIRouter(tags=["users"], responses=problems(401, 503))

_MAX_IDS = 1000


def _parse_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise WarblerError(ErrorCode.VALIDATION, "ids must be comma-separated integers") from None
    if not ids or len(ids) > _MAX_IDS or min(ids) < 1 or max(ids) > INT64_MAX:
        raise WarblerError(ErrorCode.VALIDATION, f"give 1-{_MAX_IDS} positive ids")
    return ids


@router.get("/users/me")
async def get_me(ctx: Ctx, caller: Caller) -> UserPublic:
    """The caller's profile."""
    return await ctx.accounts.get_user(caller.user_id)


@router.patch("/users/me")
async def update_me(body: UserUpdate, ctx: Ctx, caller: Caller) -> UserPublic:
    """Change the caller's display name."""
    return await ctx.accounts.set_display_name(caller.user_id, body.display_name)


@router.get("/users/{user_id}", responses=problems(404))
async def get_user(user_id: UserId, ctx: Ctx, caller: Caller) -> UserPublic:
    """One user by id."""
    return await ctx.accounts.get_user(user_id)


@router.get("/users")
async def find_users(
    ctx: Ctx,
    caller: Caller,
    prefix: Annotated[str | None, Query(min_length=1, max_length=64, pattern=r"^[^\x00]+$")] = None,
    ids: Annotated[str | None, Query(description="comma-separated user ids")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> list[UserPublic]:
    """Users by username prefix, or by ids."""
    if (prefix is None) == (ids is None):
        raise WarblerError(ErrorCode.VALIDATION, "give exactly one of prefix and ids")
    if ids is not None:
        return await ctx.accounts.list_users(_parse_ids(ids))
    assert prefix is not None
    return await ctx.accounts.search_users(prefix, limit)


@router.get("/presence")
async def get_presence(
    ctx: Ctx, caller: Caller, user_ids: Annotated[str, Query(description="comma-separated")]
) -> PresencePublic:
    """Which of these users are online now."""
    online = await ctx.chat.online(_parse_ids(user_ids))
    return PresencePublic(online=sorted(online))
