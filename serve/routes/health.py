"""/healthz (the replica answers) and /readyz (its dependencies answer).

/readyz runs every check at once, each bounded by ``_CHECK_TIMEOUT_S``: ``sql`` (SELECT 1),
``redis`` (PING on the replica's pool), ``delivery`` (the replica's pub/sub subscriptions are
live; false from a lost Redis connection until the hub has resubscribed and read the gap) and
``hosts`` (the runtime routes by a shard map and holds a handle on every host in it). 200 with
every check when all pass; otherwise a 503 problem (``unavailable``) naming what is down, with
the same checks under ``details``. Nothing is cached: it recovers on the first call after the
dependency does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from serve.context import GatewayContext
from serve.deps import Ctx
from serve.problems import problem_response
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import PROBLEM_CONTENT_TYPE, HealthPublic

router = APIRouter(tags=["health"])

_CHECK_TIMEOUT_S = 2.0


@router.get("/healthz")
async def healthz() -> HealthPublic:
    """Liveness: the replica's event loop answers."""
    return HealthPublic(status="ok")


def _probes(ctx: GatewayContext) -> dict[str, Callable[[], Awaitable[None]]]:
    async def sql() -> None:
        async with ctx.db.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def redis() -> None:
        await ctx.redis.ping()

    async def delivery() -> None:
        if not ctx.hub.connected:
            raise RuntimeError("pub/sub connection lost; resubscribing")

    async def hosts() -> None:
        shard_map = ctx.runtime.shard_map
        if shard_map is None or ctx.runtime.epoch <= 0:
            raise RuntimeError("no shard map yet")
        missing = ctx.runtime.missing_hosts()
        if missing:
            # A handle dropped after a failed call is looked up again on the next reload.
            await ctx.runtime.refresh()
            missing = ctx.runtime.missing_hosts()
        if missing:
            raise RuntimeError(f"hosts not found: {', '.join(missing)}")

    return {"sql": sql, "redis": redis, "delivery": delivery, "hosts": hosts}


async def _run(probe: Callable[[], Awaitable[None]]) -> str:
    try:
        await asyncio.wait_for(probe(), _CHECK_TIMEOUT_S)
    except TimeoutError:
        return f"failed: no answer within {_CHECK_TIMEOUT_S:.0f}s"
    except Exception as exc:
        return f"failed: {exc!r}"[:200]
    return "ok"


@router.get(
    "/readyz",
    responses={
        503: {
            "description": "A dependency is down: which one is in `detail` and `details.down`.",
            "content": {PROBLEM_CONTENT_TYPE: {}},
        }
    },
)
async def readyz(ctx: Ctx, request: Request) -> Response:
    """Readiness: SQL and Redis answer, delivery is subscribed, the hosts are known."""
    probes = _probes(ctx)
    results = await asyncio.gather(*(_run(p) for p in probes.values()))
    checks = dict(zip(probes, results, strict=True))
    down = [name for name, result in checks.items() if result != "ok"]
    if not down:
        return JSONResponse(HealthPublic(status="ok", checks=checks).model_dump())
    error = WarblerError(
        ErrorCode.UNAVAILABLE,
        f"not ready: {', '.join(down)} down",
        details={"status": "unavailable", "down": down, "checks": checks},
    )
    return problem_response(error, request)
