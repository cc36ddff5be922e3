"""connect_redis: a burst of concurrent commands beyond the pool size waits instead of failing."""

from __future__ import annotations

import asyncio

from storage import connect_redis
from storage.redis import REDIS_POOL_SIZE


async def test_burst_beyond_the_pool_waits_for_connections(redis_url: str, uid: str) -> None:
    client = connect_redis(redis_url)
    try:
        # Each BLPOP holds its connection until the timeout, so more of them than the pool has
        # connections must queue for one (redis-py's default pool raised at the 101st).
        n = REDIS_POOL_SIZE + 50
        results = await asyncio.gather(
            *(client.blpop([f"wt:{uid}:none:{i}"], timeout=0.2) for i in range(n))
        )
        assert results == [None] * n
        await client.rpush(f"wt:{uid}:list", b"x")
        assert await client.lpop(f"wt:{uid}:list") == b"x"
    finally:
        await client.aclose()
