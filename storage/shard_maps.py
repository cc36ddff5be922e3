"""The shard map in Redis: one hash at ``Keys.shard_map()`` with the committed map and, during
a move, the pending one. Changes are compare-and-set Lua scripts, so two controllers cannot
both start a move, and a committed map never goes backwards.

Maps are opaque JSON documents here (with their epoch beside them): what a map means is the
directory's business (``actors.directory.ShardMap``), how it is kept is this module's.
"""

from __future__ import annotations

import redis.asyncio as aioredis

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


class ShardMapStore:
    """Reads and changes the shard map of one namespace (JSON text, versioned by epoch)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._key = keys.shard_map()
        self._begin = redis.register_script(_BEGIN)
        self._commit = redis.register_script(_COMMIT)
        self._abort = redis.register_script(_ABORT)

    async def load(self) -> tuple[bytes | str | None, bytes | str | None]:
        """``(committed, pending)`` JSON documents; either may be None."""
        current, pending = await self._redis.hmget(self._key, ["current", "pending"])
        return (current or None, pending or None)

    async def create(self, epoch: int, document: bytes) -> bool:
        """Store the first map unless one exists; True if stored."""
        stored = await self._redis.hsetnx(self._key, "current", document)
        if stored:
            await self._redis.hset(self._key, "epoch", str(epoch))
        return bool(stored)

    async def begin(self, current_epoch: int, pending_epoch: int, document: bytes) -> None:
        """Record the pending map as the move in progress (CONFLICT if the committed epoch is
        not ``current_epoch`` or another move is pending)."""
        result = await self._begin(keys=[self._key], args=[current_epoch, pending_epoch, document])
        if int(result) == -1:
            raise WarblerError(ErrorCode.CONFLICT, "the shard map changed; reload and retry")
        if int(result) == -2:
            raise WarblerError(ErrorCode.CONFLICT, "another shard move is in progress")

    async def commit(self, pending_epoch: int, document: bytes) -> None:
        """Make the pending map the committed one (idempotent)."""
        result = await self._commit(keys=[self._key], args=[pending_epoch, document])
        if int(result) == -2:
            raise WarblerError(ErrorCode.CONFLICT, "a different shard move is pending")

    async def abort(self, pending_epoch: int) -> None:
        """Forget the pending map if it is still the move in progress."""
        await self._abort(keys=[self._key], args=[pending_epoch])

    async def delete(self) -> None:
        """Remove the map (cluster teardown)."""
        await self._redis.delete(self._key)
