"""/v1/auth: register, login, refresh, logout."""

from __future__ import annotations

from fastapi import APIRouter, status

from serve.deps import Caller, Ctx
from warbler.protocol import (
    LogoutCreate,
    ProblemPublic,
    RefreshCreate,
    SessionCreate,
    TokenPublic,
    UserCreate,
    UserPublic,
)

router = APIRouter(prefix="/auth", tags=["auth"], responses={422: {"model": ProblemPublic}})


@router.post(
    "/register", status_code=status.HTTP_201_CREATED, responses={409: {"model": ProblemPublic}}
)
async def register(body: UserCreate, ctx: Ctx) -> UserPublic:
    """Create an account."""
    return await ctx.accounts.register(body)


@router.post("/login", responses={401: {"model": ProblemPublic}})
async def login(body: SessionCreate, ctx: Ctx) -> TokenPublic:
    """Trade a username and password for an access token and a refresh token."""
    return await ctx.accounts.login(body.username, body.password)


@router.post("/refresh", responses={401: {"model": ProblemPublic}})
async def refresh(body: RefreshCreate, ctx: Ctx) -> TokenPublic:
    """Trade a refresh token for a new pair; the old refresh token stops working."""
    return await ctx.accounts.refresh(body.refresh_token)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(body: LogoutCreate, ctx: Ctx, caller: Caller) -> None:
    """Revoke a refresh token (this session's by default), or all of the user's."""
    await ctx.accounts.logout(caller, body.refresh_token, body.all_devices)
