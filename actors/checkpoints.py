"""Loading and saving entity checkpoints: hot copies in Redis, durable ones in SQL."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from actors.context import EntityContext

logger = logging.getLogger(__name__)

# A hot copy outlives passivation for a while (fast re-activation), then Redis lets it go:
# the SQL copy written at passivation is the durable one.
HOT_TTL_S = 3600.0


@dataclass(frozen=True, slots=True)
class Loaded:
    """The newest checkpoint found, and which stores already hold that version."""

    version: int
    state: bytes
    in_redis: bool
    in_sql: bool


class Checkpointer:
    """Reads both copies and keeps the newer; writes either copy (each keeps the newer version,
    so a late or repeated write never moves an entity backwards)."""

    def __init__(self, ctx: EntityContext) -> None:
        self._cache = ctx.checkpoint_cache
        self._store = ctx.checkpoints

    async def load(self, key: str, *, hot_is_enough: bool = False) -> Loaded | None:
        """The checkpoint with the higher version (Redis and SQL read concurrently); None when
        neither has one. Redis being unreachable is logged and treated as a miss.

        ``hot_is_enough``: for kinds that replay their log after the checkpoint, any hot copy
        leads to the same state (a newer SQL copy would only shorten the replay), so the SQL
        read is skipped when Redis has one; that halves the cost of a cold activation.
        """
        if hot_is_enough:
            hot = await self._get_hot(key)
            if hot is not None:
                return Loaded(hot[0], hot[1], in_redis=True, in_sql=True)
            durable = await self._store.get(key)
            if durable is None:
                return None
            return Loaded(durable.version, bytes(durable.state), in_redis=False, in_sql=True)
        hot_task = asyncio.ensure_future(self._get_hot(key))
        durable = await self._store.get(key)
        hot = await hot_task
        if hot is None and durable is None:
            return None
        hot_v = hot[0] if hot else -1
        sql_v = durable.version if durable else -1
        if hot is not None and hot_v >= sql_v:
            return Loaded(hot_v, hot[1], True, sql_v == hot_v)
        assert durable is not None
        return Loaded(sql_v, bytes(durable.state), hot_v == sql_v, True)

    async def _get_hot(self, key: str) -> tuple[int, bytes] | None:
        try:
            return await self._cache.get(key)
        except Exception:
            logger.warning("hot checkpoint of %s unreadable; using SQL", key, exc_info=True)
            return None

    async def save_hot(self, key: str, version: int, state: bytes) -> None:
        """Write the Redis copy."""
        await self._cache.put(key, version, state, HOT_TTL_S)

    async def save_hot_many(self, items: list[tuple[str, int, bytes]]) -> None:
        """Write the Redis copies of many ``(key, version, state)`` in one round trip."""
        await self._cache.put_many(items, HOT_TTL_S)

    async def save_durable(self, key: str, version: int, state: bytes) -> None:
        """Write the SQL copy."""
        await self._store.put(key, version, state)
