"""/v1/auth: register, login, refresh, logout."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, status

from serve.deps import Caller, Ctx
from serve.problems import problems
from serve.ratelimit import client_address
from warbler.protocol import (
    LogoutCreate,
    RefreshCreate,
    SessionCreate,
    TokenPublic,
    UserCreate,
    UserPublic,
)


def _client_address(request: Request, ctx: Ctx) -> str:
    peer = request.client.host if request.client else None
    forwarded = request.headers.get("x-forwarded-for")
    return client_address(peer, forwarded, ctx.settings.trusted_proxies)


ClientAddress = Annotated[str, Depends(_client_address)]

router = APIRouter(prefix="/auth", tags=["auth"], responses=problems(429, 503))


@router.post("/register", status_code=status.HTTP_201_CREATED, responses=problems(409))
async def register(body: UserCreate, ctx: Ctx, address: ClientAddress) -> UserPublic:
    """Create an account."""
    return await ctx.accounts.register(body, address)


@router.post("/login", responses=problems(401))
async def login(body: SessionCreate, ctx: Ctx, address: ClientAddress) -> TokenPublic:
    """Trade a username and password for an access token and a refresh token."""
    return await ctx.accounts.login(body.username, body.password, address)


@router.post("/refresh", responses=problems(401))
async def refresh(body: RefreshCreate, ctx: Ctx) -> TokenPublic:
    """Trade a refresh token for a new pair; the old refresh token stops working."""
    return await ctx.accounts.refresh(body.refresh_token)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, responses=problems(401, 404))
async def logout(body: LogoutCreate, ctx: Ctx, caller: Caller) -> None:
    """Revoke a refresh token (this session's by default), or all of the user's."""
    await ctx.accounts.logout(caller, body.refresh_token, body.all_devices)
