"""The directory's view of ``storage.ShardMapStore``: the same operations in ``ShardMap``s.

Redis and its scripts live in storage; this adapter only turns maps into their JSON and back.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from actors.directory import ShardMap
from storage import ShardMapStore
from storage.keys import Keys


class DirectoryStore:
    """Reads and changes the shard map of one namespace."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._store = ShardMapStore(redis, keys)

    async def load(self) -> tuple[ShardMap | None, ShardMap | None]:
        """``(committed, pending)``; either may be None."""
        current, pending = await self._store.load()
        return (
            ShardMap.from_json(current) if current else None,
            ShardMap.from_json(pending) if pending else None,
        )

    async def create(self, initial: ShardMap) -> bool:
        """Store the first map unless one exists; True if stored."""
        return await self._store.create(initial.epoch, initial.to_json())

    async def begin(self, current_epoch: int, pending: ShardMap) -> None:
        """Record ``pending`` as the move in progress (CONFLICT if the committed epoch is not
        ``current_epoch`` or another move is pending)."""
        await self._store.begin(current_epoch, pending.epoch, pending.to_json())

    async def begin_failover(
        self, current_epoch: int, pending: ShardMap, host: str, restarts: int
    ) -> bool:
        """Record ``pending`` (``host``'s shards given away) unless Ray's restart of ``host`` as
        incarnation ``restarts`` (or later) has already registered. True if recorded."""
        return await self._store.begin_failover(
            current_epoch, pending.epoch, pending.to_json(), host, restarts
        )

    async def register(
        self, host: str, incarnation: int
    ) -> tuple[ShardMap | None, ShardMap | None]:
        """A starting host: record its incarnation and read ``(committed, pending)`` at once."""
        current, pending = await self._store.register(host, incarnation)
        return (
            ShardMap.from_json(current) if current else None,
            ShardMap.from_json(pending) if pending else None,
        )

    async def failed_over(self) -> list[str]:
        """Hosts a failover took shards from that have not been given shards again."""
        return await self._store.failed_over()

    async def clear_failed(self, host: str) -> None:
        """``host`` serves shards again, or was stopped."""
        await self._store.clear_failed(host)

    async def commit(self, pending: ShardMap) -> None:
        """Make ``pending`` the committed map (idempotent)."""
        await self._store.commit(pending.epoch, pending.to_json())

    async def abort(self, pending: ShardMap) -> None:
        """Forget ``pending`` if it is still the move in progress."""
        await self._store.abort(pending.epoch)

    async def delete(self) -> None:
        """Remove the map (cluster teardown)."""
        await self._store.delete()
