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

    async def load(self, key: str) -> Loaded | None:
        """The checkpoint with the higher version (Redis and SQL read concurrently); None when
        neither has one. Redis being unreachable is logged and treated as a miss."""
        hot_task = asyncio.ensure_future(self._cache.get(key))
        durable = await self._store.get(key)
        try:
            hot = await hot_task
        except Exception:
            logger.warning("hot checkpoint of %s unreadable; using SQL", key, exc_info=True)
            hot = None
        hot_v = hot[0] if hot else -1
        sql_v = durable.version if durable else -1
        if hot is None and durable is None:
            return None
        if hot is not None and hot_v >= sql_v:
            return Loaded(hot_v, hot[1], True, sql_v == hot_v)
        assert durable is not None
        return Loaded(sql_v, bytes(durable.state), hot_v == sql_v, True)

    async def save_hot(self, key: str, version: int, state: bytes) -> None:
        """Write the Redis copy."""
        await self._cache.put(key, version, state, HOT_TTL_S)

    async def save_durable(self, key: str, version: int, state: bytes) -> None:
        """Write the SQL copy."""
        await self._store.put(key, version, state)
