"""The shard map in Redis: one hash at ``Keys.shard_map()`` with the committed map and, during
a move, the pending one. Changes are compare-and-set Lua scripts, so two controllers cannot
both start a move, and a committed map never goes backwards.

(Storage has no cache class for the directory yet; this is the thin stand-in, and the only
place in ``actors`` that speaks Redis directly.)
"""

from __future__ import annotations

import redis.asyncio as aioredis

from actors.directory import ShardMap
from storage.keys import Keys
from warbler.errors import ErrorCode, WarblerError

# KEYS[1] = map hash; ARGV = expected current epoch, pending epoch, pending json.
_BEGIN = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if cur ~= tonumber(ARGV[1]) then return -1 end
local pend = redis.call('HGET', KEYS[1], 'pending_epoch')
if pend and pend ~= ARGV[2] then return -2 end
redis.call('HSET', KEYS[1], 'pending_epoch', ARGV[2], 'pending', ARGV[3])
return 1
"""

# KEYS[1] = map hash; ARGV = pending epoch, map json.
_COMMIT = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if cur >= tonumber(ARGV[1]) then return 0 end
local pend = redis.call('HGET', KEYS[1], 'pending_epoch')
if pend and pend ~= ARGV[1] then return -2 end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'current', ARGV[2])
redis.call('HDEL', KEYS[1], 'pending_epoch', 'pending')
return 1
"""

# KEYS[1] = map hash; ARGV = pending epoch.
_ABORT = """
if redis.call('HGET', KEYS[1], 'pending_epoch') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'pending_epoch', 'pending')
  return 1
end
return 0
"""


class DirectoryStore:
    """Reads and changes the shard map of one namespace."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._key = keys.shard_map()
        self._begin = redis.register_script(_BEGIN)
        self._commit = redis.register_script(_COMMIT)
        self._abort = redis.register_script(_ABORT)

    async def load(self) -> tuple[ShardMap | None, ShardMap | None]:
        """``(committed, pending)``; either may be None."""
        current, pending = await self._redis.hmget(self._key, ["current", "pending"])
        return (
            ShardMap.from_json(current) if current else None,
            ShardMap.from_json(pending) if pending else None,
        )

    async def create(self, initial: ShardMap) -> bool:
        """Store the first map unless one exists; True if stored."""
        stored = await self._redis.hsetnx(self._key, "current", initial.to_json())
        if stored:
            await self._redis.hset(self._key, "epoch", str(initial.epoch))
        return bool(stored)

    async def begin(self, current_epoch: int, pending: ShardMap) -> None:
        """Record ``pending`` as the move in progress (CONFLICT if the committed epoch is not
        ``current_epoch`` or another move is pending)."""
        result = await self._begin(
            keys=[self._key], args=[current_epoch, pending.epoch, pending.to_json()]
        )
        if int(result) == -1:
            raise WarblerError(ErrorCode.CONFLICT, "the shard map changed; reload and retry")
        if int(result) == -2:
            raise WarblerError(ErrorCode.CONFLICT, "another shard move is in progress")

    async def commit(self, pending: ShardMap) -> None:
        """Make ``pending`` the committed map (idempotent)."""
        result = await self._commit(keys=[self._key], args=[pending.epoch, pending.to_json()])
        if int(result) == -2:
            raise WarblerError(ErrorCode.CONFLICT, "a different shard move is pending")

    async def abort(self, pending: ShardMap) -> None:
        """Forget ``pending`` if it is still the move in progress."""
        await self._abort(keys=[self._key], args=[pending.epoch])

    async def delete(self) -> None:
        """Remove the map (cluster teardown)."""
        await self._redis.delete(self._key)
