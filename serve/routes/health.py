"""/healthz (the replica answers) and /readyz (its dependencies answer)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from serve.deps import Ctx
from warbler.protocol import HealthPublic

router = APIRouter(tags=["health"])

_CHECK_TIMEOUT_S = 2.0


@router.get("/healthz")
async def healthz() -> HealthPublic:
    """Liveness: the replica's event loop answers."""
    return HealthPublic(status="ok")


@router.get("/readyz", responses={503: {"model": HealthPublic}})
async def readyz(ctx: Ctx) -> JSONResponse:
    """Readiness: SQL and Redis answer, and the actor runtime knows its hosts."""

    async def sql() -> None:
        async with ctx.db.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def redis() -> None:
        await ctx.redis.ping()

    async def runtime() -> None:
        if ctx.runtime.epoch <= 0:
            raise RuntimeError("no shard map yet")

    checks: dict[str, str] = {}
    for name, probe in (("sql", sql), ("redis", redis), ("runtime", runtime)):
        try:
            await asyncio.wait_for(probe(), _CHECK_TIMEOUT_S)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"failed: {exc!r}"[:200]
    ok = all(v == "ok" for v in checks.values())
    body = HealthPublic(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
