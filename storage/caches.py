"""Redis caches: hot checkpoints, presence, idempotency records and rate limits.

Every class takes ``(redis, keys)``. Whatever must be atomic is one Lua script, and scripts read
the server's clock (TIME), so gateways with skewed clocks agree on expiry and refill.
Nothing here is durable: SQL is the source of truth.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import redis.asyncio as aioredis

from storage.keys import Keys
from warbler.errors import ErrorCode, WarblerError


def _as_bytes(value: bytes | str) -> bytes:
    # The clients are made with decode_responses=False, so replies are bytes; the stubs allow str.
    return value.encode() if isinstance(value, str) else bytes(value)


_CKPT_PUT = """
local v = redis.call('HGET', KEYS[1], 'v')
if v and tonumber(v) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 's', ARGV[2])
local ttl = tonumber(ARGV[3])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) else redis.call('PERSIST', KEYS[1]) end
return 1
"""

# _CKPT_PUT for many keys at once: ARGV holds (version, state) per key, then the TTL last.
# Returns one 1/0 per key, as _CKPT_PUT would.
_CKPT_PUT_MANY = """
local ttl = tonumber(ARGV[#ARGV])
local out = {}
for i, key in ipairs(KEYS) do
  local version = tonumber(ARGV[2 * i - 1])
  local v = redis.call('HGET', key, 'v')
  if v and tonumber(v) >= version then
    out[i] = 0
  else
    redis.call('HSET', key, 'v', ARGV[2 * i - 1], 's', ARGV[2 * i])
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) else redis.call('PERSIST', key) end
    out[i] = 1
  end
end
return out
"""


class CheckpointCache:
    """The hot copy of each entity's checkpoint: ``(version, state)``; a newer version wins."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._put = redis.register_script(_CKPT_PUT)
        self._put_many = redis.register_script(_CKPT_PUT_MANY)

    async def get(self, key: str) -> tuple[int, bytes] | None:
        """``(version, state)`` of entity ``key``, or None."""
        version, state = await self._redis.hmget(self._keys.ckpt(key), ["v", "s"])
        if version is None or state is None:
            return None
        return int(version), _as_bytes(state)

    async def put(self, key: str, version: int, state: bytes, ttl_s: float = 0) -> bool:
        """Store ``state`` unless a version >= ``version`` is stored; True if stored.
        ``ttl_s`` > 0 lets an idle entity's checkpoint expire."""
        stored = await self._put(
            keys=[self._keys.ckpt(key)], args=[version, state, int(ttl_s * 1000)]
        )
        return bool(stored)

    async def put_many(
        self, items: Sequence[tuple[str, int, bytes]], ttl_s: float = 0
    ) -> list[bool]:
        """``put`` for many ``(key, version, state)`` at once, in one round trip (one script
        call): a host checkpoints everything due in one tick this way. One bool per item."""
        if not items:
            return []
        args: list[int | bytes] = []
        for _, version, state in items:
            args.append(version)
            args.append(state)
        args.append(int(ttl_s * 1000))
        stored = await self._put_many(keys=[self._keys.ckpt(k) for k, _, _ in items], args=args)
        return [bool(x) for x in stored]

    async def delete(self, key: str) -> None:
        """Forget entity ``key``'s hot checkpoint."""
        await self._redis.delete(self._keys.ckpt(key))


# Each device field holds "<expiry ms>:<replica id>"; the hash lives as long as its longest device.
_PRESENCE_SET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', now + ttl) .. ':' .. ARGV[2])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""

# Returns, per key, the flat list of live (device, replica) pairs; expired devices are removed.
_PRESENCE_LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i, key in ipairs(KEYS) do
  local live = {}
  local all = redis.call('HGETALL', key)
  for j = 1, #all, 2 do
    local sep = string.find(all[j + 1], ':', 1, true)
    if tonumber(string.sub(all[j + 1], 1, sep - 1)) > now then
      live[#live + 1] = all[j]
      live[#live + 1] = string.sub(all[j + 1], sep + 1)
    else
      redis.call('HDEL', key, all[j])
    end
  end
  out[i] = live
end
return out
"""


class PresenceCache:
    """Which devices of a user are online, and on which gateway replica; entries expire."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._set = redis.register_script(_PRESENCE_SET)
        self._live = redis.register_script(_PRESENCE_LIVE)

    async def set_device(self, user_id: int, device_id: str, replica_id: str, ttl_s: float) -> None:
        """Mark a device online on ``replica_id`` for ``ttl_s`` seconds (call again to renew)."""
        if ttl_s <= 0:
            raise WarblerError(ErrorCode.VALIDATION, "presence ttl must be positive")
        await self._set(
            keys=[self._keys.presence(user_id)],
            args=[device_id, replica_id, max(1, int(ttl_s * 1000))],
        )

    async def drop_device(self, user_id: int, device_id: str) -> None:
        """Mark a device offline."""
        await self._redis.hdel(self._keys.presence(user_id), device_id)

    async def devices(self, user_id: int) -> dict[str, str]:
        """Live devices of a user: device id -> replica id."""
        (flat,) = await self._live(keys=[self._keys.presence(user_id)])
        return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}

    async def online_users(self, user_ids: Iterable[int]) -> set[int]:
        """The users among ``user_ids`` with at least one live device (one round trip)."""
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return set()
        result = await self._live(keys=[self._keys.presence(u) for u in ids])
        return {u for u, flat in zip(ids, result, strict=True) if flat}


_IDEM_PUT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return redis.call('GET', KEYS[1])
"""


class IdempotencyCache:
    """Short-lived idempotency records: the first writer of a key wins, later ones see its value."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._put = redis.register_script(_IDEM_PUT)

    async def put_if_absent(self, scope: str, key: str, value: bytes, ttl_s: float) -> bytes | None:
        """Store ``value`` if the key is free (returns None); else return the stored value."""
        if ttl_s <= 0:
            raise WarblerError(ErrorCode.VALIDATION, "idempotency ttl must be positive")
        existing = await self._put(
            keys=[self._keys.idem(scope, key)], args=[value, max(1, int(ttl_s * 1000))]
        )
        return None if existing is None else bytes(existing)

    async def get(self, scope: str, key: str) -> bytes | None:
        """The stored value, or None."""
        value = await self._redis.get(self._keys.idem(scope, key))
        return None if value is None else _as_bytes(value)

    async def set(self, scope: str, key: str, value: bytes, ttl_s: float) -> None:
        """Overwrite the value (e.g. replace a 'pending' marker by the final result)."""
        await self._redis.set(self._keys.idem(scope, key), value, px=max(1, int(ttl_s * 1000)))

    async def delete(self, scope: str, key: str) -> None:
        """Forget a record."""
        await self._redis.delete(self._keys.idem(scope, key))


_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil or ts == nil then tokens = burst; ts = now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
           'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return allowed
"""


class RateLimiter:
    """Token buckets in Redis: ``burst`` tokens, refilled at ``rate_per_s``, one Lua call each."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._bucket = redis.register_script(_TOKEN_BUCKET)

    async def allow(self, key: str, rate_per_s: float, burst: int, cost: int = 1) -> bool:
        """Take ``cost`` tokens from bucket ``key`` if it has them; False means rate-limited."""
        if rate_per_s <= 0 or burst < 1 or cost < 0:
            raise WarblerError(
                ErrorCode.VALIDATION, "rate limit needs rate_per_s > 0, burst >= 1, cost >= 0"
            )
        allowed = await self._bucket(
            keys=[self._keys.ratelimit(key)], args=[repr(float(rate_per_s)), burst, cost]
        )
        return bool(allowed)
