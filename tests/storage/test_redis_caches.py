"""Presence, idempotency records, rate limits and key naming, against a real Redis."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from storage import IdempotencyCache, Keys, PresenceCache, RateLimiter
from warbler.errors import ErrorCode, WarblerError


def test_keys_are_namespaced() -> None:
    keys = Keys("ns1")
    names = [
        keys.ckpt("conv:1"),
        keys.presence(7),
        keys.shard_map(),
        keys.hosts(),
        keys.lock("x"),
        keys.replica("r1"),
        keys.ratelimit("send:7"),
        keys.idem("send", "7:abc"),
        keys.recent(3),
        keys.conv_channel(3),
        keys.user_channel(7),
        keys.replica_channel("r1"),
    ]
    assert all(n.startswith("ns1:") for n in names)
    assert len(set(names)) == len(names)
    assert Keys("ns2").conv_channel(3) != keys.conv_channel(3)
    for bad in ("", "a:b"):
        with pytest.raises(ValueError):
            Keys(bad)


async def test_presence_devices_and_online_users(redis: aioredis.Redis, keys: Keys) -> None:
    presence = PresenceCache(redis, keys)
    await presence.set_device(1, "phone", "replica-a", ttl_s=60)
    await presence.set_device(1, "laptop", "replica-b", ttl_s=60)
    await presence.set_device(2, "phone", "replica-a", ttl_s=60)
    assert await presence.devices(1) == {"phone": "replica-a", "laptop": "replica-b"}
    assert await presence.online_users([1, 2, 3, 1]) == {1, 2}
    assert await presence.online_users([]) == set()

    await presence.set_device(1, "phone", "replica-c", ttl_s=60)  # reconnected elsewhere
    assert (await presence.devices(1))["phone"] == "replica-c"
    await presence.drop_device(1, "phone")
    await presence.drop_device(2, "phone")
    assert await presence.devices(1) == {"laptop": "replica-b"}
    assert await presence.online_users([1, 2]) == {1}
    assert await presence.devices(3) == {}


async def test_presence_expires_per_device(redis: aioredis.Redis, keys: Keys) -> None:
    presence = PresenceCache(redis, keys)
    await presence.set_device(5, "short", "r", ttl_s=0.2)
    await presence.set_device(5, "long", "r", ttl_s=60)
    await asyncio.sleep(0.4)
    assert await presence.devices(5) == {"long": "r"}
    await presence.set_device(6, "only", "r", ttl_s=0.2)
    await asyncio.sleep(0.4)
    assert await presence.online_users([5, 6]) == {5}
    assert await redis.exists(keys.presence(6)) == 0  # the whole hash expired


async def test_presence_key_lives_as_long_as_its_longest_device(
    redis: aioredis.Redis, keys: Keys
) -> None:
    presence = PresenceCache(redis, keys)
    await presence.set_device(8, "long", "r", ttl_s=60)
    await presence.set_device(8, "short", "r", ttl_s=1)
    assert await redis.pttl(keys.presence(8)) > 30_000
    with pytest.raises(WarblerError):
        await presence.set_device(8, "x", "r", ttl_s=0)


async def test_idempotency_first_writer_wins(redis: aioredis.Redis, keys: Keys) -> None:
    idem = IdempotencyCache(redis, keys)
    assert await idem.put_if_absent("send", "7:abc", b"pending", ttl_s=60) is None
    assert await idem.put_if_absent("send", "7:abc", b"other", ttl_s=60) == b"pending"
    assert await idem.get("send", "7:abc") == b"pending"
    await idem.set("send", "7:abc", b"seq=5", ttl_s=60)
    assert await idem.put_if_absent("send", "7:abc", b"other", ttl_s=60) == b"seq=5"
    assert await idem.get("other-scope", "7:abc") is None
    await idem.delete("send", "7:abc")
    assert await idem.get("send", "7:abc") is None


async def test_idempotency_concurrent_claims_have_one_winner(
    redis: aioredis.Redis, keys: Keys
) -> None:
    idem = IdempotencyCache(redis, keys)
    results = await asyncio.gather(
        *(idem.put_if_absent("s", "k", str(i).encode(), ttl_s=60) for i in range(20))
    )
    winners = [i for i, r in enumerate(results) if r is None]
    assert len(winners) == 1
    assert {r for r in results if r is not None} == {str(winners[0]).encode()}


async def test_idempotency_record_expires(redis: aioredis.Redis, keys: Keys) -> None:
    idem = IdempotencyCache(redis, keys)
    assert await idem.put_if_absent("s", "ttl", b"a", ttl_s=0.1) is None
    await asyncio.sleep(0.3)
    assert await idem.put_if_absent("s", "ttl", b"b", ttl_s=60) is None
    with pytest.raises(WarblerError):
        await idem.put_if_absent("s", "ttl", b"c", ttl_s=0)


async def test_rate_limiter_allows_a_burst_then_limits(redis: aioredis.Redis, keys: Keys) -> None:
    limiter = RateLimiter(redis, keys)
    # A refill so slow that no token comes back during the test.
    results = [await limiter.allow("u1", rate_per_s=0.001, burst=5) for _ in range(8)]
    assert results == [True] * 5 + [False] * 3
    assert await limiter.allow("u2", rate_per_s=0.001, burst=5) is True  # separate bucket


async def test_rate_limiter_cost(redis: aioredis.Redis, keys: Keys) -> None:
    limiter = RateLimiter(redis, keys)
    assert await limiter.allow("c", rate_per_s=0.001, burst=10, cost=7) is True
    assert await limiter.allow("c", rate_per_s=0.001, burst=10, cost=4) is False
    assert await limiter.allow("c", rate_per_s=0.001, burst=10, cost=3) is True
    assert await limiter.allow("big", rate_per_s=0.001, burst=10, cost=11) is False


async def test_rate_limiter_refills(redis: aioredis.Redis, keys: Keys) -> None:
    limiter = RateLimiter(redis, keys)
    assert await limiter.allow("r", rate_per_s=20, burst=1) is True
    await asyncio.sleep(0.2)  # 4 tokens' worth of time, capped at the burst of 1
    assert await limiter.allow("r", rate_per_s=20, burst=1) is True
    assert 0 < await redis.pttl(keys.ratelimit("r")) <= 2000


async def test_rate_limiter_concurrent_callers_share_one_bucket(
    redis: aioredis.Redis, keys: Keys
) -> None:
    limiter = RateLimiter(redis, keys)
    results = await asyncio.gather(
        *(limiter.allow("shared", rate_per_s=0.001, burst=10) for _ in range(30))
    )
    assert sum(results) == 10


async def test_rate_limiter_rejects_bad_parameters(redis: aioredis.Redis, keys: Keys) -> None:
    limiter = RateLimiter(redis, keys)
    for rate, burst, cost in ((0, 1, 1), (1, 0, 1), (1, 1, -1)):
        with pytest.raises(WarblerError) as err:
            await limiter.allow("bad", rate_per_s=rate, burst=burst, cost=cost)
        assert err.value.code is ErrorCode.VALIDATION
    assert await redis.exists(keys.ratelimit("bad")) == 0
