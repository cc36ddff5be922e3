"""The shard map in Redis: one hash at ``Keys.shard_map()`` with the committed map and, during
a move, the pending one. Changes are compare-and-set Lua scripts, so two controllers cannot
both start a move, and a committed map never goes backwards.

Maps are opaque JSON documents here (with their epoch beside them): what a map means is the
directory's business (``actors.directory.ShardMap``), how it is kept is this module's.

The same hash keeps each host's incarnation (``inc:<host>``: how many times Ray had restarted
it when it started) and marks the hosts a failover took shards from (``failed:<host>``). A
starting host registers its incarnation and reads the maps in one script, and a failover
begins only if no newer incarnation of the dead host has registered: so either the restarted
host reads the failover's map, or the failover is refused and the host's own restart serves
its shards. Never both.
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

# KEYS[1] = map hash; ARGV = expected current epoch, pending epoch, pending json, host,
# the incarnation Ray is restarting it as (the dead one is older).
_BEGIN_FAILOVER = """
local inc = tonumber(redis.call('HGET', KEYS[1], 'inc:' .. ARGV[4]) or '-1')
if inc >= tonumber(ARGV[5]) then return -3 end
local cur = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if cur ~= tonumber(ARGV[1]) then return -1 end
if redis.call('HEXISTS', KEYS[1], 'pending_epoch') == 1 then return -2 end
redis.call('HSET', KEYS[1], 'pending_epoch', ARGV[2], 'pending', ARGV[3],
           'failed:' .. ARGV[4], '1')
return 1
"""

# KEYS[1] = map hash; ARGV = host, incarnation.
_REGISTER = """
redis.call('HSET', KEYS[1], 'inc:' .. ARGV[1], ARGV[2])
return redis.call('HMGET', KEYS[1], 'current', 'pending')
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
        self._begin_failover = redis.register_script(_BEGIN_FAILOVER)
        self._register = redis.register_script(_REGISTER)

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

    async def begin_failover(
        self, current_epoch: int, pending_epoch: int, document: bytes, host: str, restarts: int
    ) -> bool:
        """Like ``begin``, for a map that takes the shards of a dead ``host`` away. False (and
        nothing written) if an incarnation ``>= restarts`` of the host has registered (the
        restart won: it serves its shards) or the map changed or a move is pending."""
        result = await self._begin_failover(
            keys=[self._key], args=[current_epoch, pending_epoch, document, host, restarts]
        )
        return int(result) == 1

    async def register(
        self, host: str, incarnation: int
    ) -> tuple[bytes | str | None, bytes | str | None]:
        """Record that ``host`` runs as ``incarnation`` and read ``(committed, pending)``, in
        one step (see the module docstring)."""
        current, pending = await self._register(keys=[self._key], args=[host, incarnation])
        return (current or None, pending or None)

    async def failed_over(self) -> list[str]:
        """The hosts whose shards a failover gave away and that were not given shards again."""
        fields = await self._redis.hkeys(self._key)
        names = [f.decode() if isinstance(f, bytes) else str(f) for f in fields]
        return sorted(n.removeprefix("failed:") for n in names if n.startswith("failed:"))

    async def clear_failed(self, host: str) -> None:
        """``host`` serves shards again (or was stopped): no longer failed over."""
        await self._redis.hdel(self._key, f"failed:{host}")

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
