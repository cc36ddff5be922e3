"""Abuse counters in Redis: failed logins and registrations per account and per address.

Fixed windows: the first hit of a key starts its window (its TTL), later hits count until it
expires. One Lua call per hit, reading nothing but the key, so every gateway replica shares
the same count (logins and registrations are not a hot path: a round trip each is cheap).
"""

from __future__ import annotations

import redis.asyncio as aioredis

from storage.keys import Keys

# Returns {count, ms left in the window}.
_HIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {n, ttl}
"""

_PEEK = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
return {n, redis.call('PTTL', KEYS[1])}
"""


class ThrottleCache:
    """Counts of attempts per named thing (``"login:acct:alice"``) in fixed windows."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._hit = redis.register_script(_HIT)
        self._peek = redis.register_script(_PEEK)

    async def hit(self, name: str, window_s: float) -> tuple[int, float]:
        """Count one attempt; returns (attempts in the window, seconds until it ends)."""
        count, ttl_ms = await self._hit(
            keys=[self._keys.ratelimit(name)], args=[max(1, int(window_s * 1000))]
        )
        return int(count), max(0.0, int(ttl_ms) / 1000)

    async def peek(self, names: list[str]) -> list[tuple[int, float]]:
        """(attempts, seconds left) of each name, counting nothing."""
        out = []
        for name in names:
            count, ttl_ms = await self._peek(keys=[self._keys.ratelimit(name)])
            out.append((int(count), max(0.0, int(ttl_ms) / 1000)))
        return out

    async def reset(self, name: str) -> None:
        """Forget the attempts of ``name`` (a successful login clears its account's failures)."""
        await self._redis.delete(self._keys.ratelimit(name))
