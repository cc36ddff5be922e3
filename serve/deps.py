"""FastAPI dependencies: the replica's context and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serve.context import GatewayContext
from serve.tokens import AccessClaims

_bearer = HTTPBearer(auto_error=False, description="An access token from /v1/auth/login")


def get_ctx(request: Request) -> GatewayContext:
    """The replica's services (set on the app when it is built)."""
    ctx: GatewayContext = request.app.state.ctx
    return ctx


Ctx = Annotated[GatewayContext, Depends(get_ctx)]


def current_user(
    ctx: Ctx, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> AccessClaims:
    """The caller's verified access token (UNAUTHENTICATED / TOKEN_EXPIRED problem otherwise)."""
    return ctx.accounts.authenticate(credentials.credentials if credentials else None)


Caller = Annotated[AccessClaims, Depends(current_user)]
