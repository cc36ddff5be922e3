"""Checkpoints in SQL (CheckpointStore) and Redis (CheckpointCache): the newer version wins."""

from __future__ import annotations

import asyncio
import os

import pytest
import redis.asyncio as aioredis

from storage import CheckpointCache, CheckpointStore, Keys
from warbler.errors import ErrorCode, WarblerError


async def test_sql_checkpoint_write_and_read(checkpoints: CheckpointStore, uid: str) -> None:
    key = f"conv:{uid}"
    assert await checkpoints.get(key) is None
    await checkpoints.put(key, 3, b"three")
    stored = await checkpoints.get(key)
    assert stored is not None and (stored.version, stored.state) == (3, b"three")
    first_update = stored.updated_at

    await checkpoints.put(key, 2, b"older")  # ignored
    await checkpoints.put(key, 3, b"same version")  # ignored too
    stored = await checkpoints.get(key)
    assert stored is not None and (stored.version, stored.state) == (3, b"three")
    assert stored.updated_at == first_update

    await checkpoints.put(key, 10, b"ten")
    stored = await checkpoints.get(key)
    assert stored is not None and (stored.version, stored.state) == (10, b"ten")
    assert stored.updated_at >= first_update


async def test_sql_checkpoint_holds_large_binary_state(
    checkpoints: CheckpointStore, uid: str
) -> None:
    # Bigger than MySQL's BLOB (64 KiB): the column is LONGBLOB there.
    state = os.urandom(300_000) + b"\x00\xff"
    await checkpoints.put(f"user:{uid}", 1, state)
    stored = await checkpoints.get(f"user:{uid}")
    assert stored is not None and stored.state == state


async def test_sql_concurrent_puts_keep_the_newest(checkpoints: CheckpointStore, uid: str) -> None:
    key = f"race:{uid}"
    versions = list(range(1, 21))
    await asyncio.gather(*(checkpoints.put(key, v, f"v{v}".encode()) for v in reversed(versions)))
    stored = await checkpoints.get(key)
    assert stored is not None and (stored.version, stored.state) == (20, b"v20")


async def test_sql_checkpoint_key_is_validated(checkpoints: CheckpointStore) -> None:
    for key in ("", "k" * 192):
        with pytest.raises(WarblerError) as err:
            await checkpoints.put(key, 1, b"x")
        assert err.value.code is ErrorCode.VALIDATION


async def test_redis_checkpoint_keeps_the_newer_version(redis: aioredis.Redis, keys: Keys) -> None:
    cache = CheckpointCache(redis, keys)
    assert await cache.get("conv:1") is None
    assert await cache.put("conv:1", 5, b"five") is True
    assert await cache.put("conv:1", 4, b"four") is False
    assert await cache.put("conv:1", 5, b"five again") is False
    assert await cache.get("conv:1") == (5, b"five")
    assert await cache.put("conv:1", 6, b"\x00six\xff") is True
    assert await cache.get("conv:1") == (6, b"\x00six\xff")
    assert await redis.exists(keys.ckpt("conv:1")) == 1
    await cache.delete("conv:1")
    assert await cache.get("conv:1") is None


async def test_redis_checkpoint_concurrent_puts_keep_the_newest(
    redis: aioredis.Redis, keys: Keys
) -> None:
    cache = CheckpointCache(redis, keys)
    await asyncio.gather(*(cache.put("e", v, str(v).encode()) for v in (3, 9, 1, 7, 2)))
    assert await cache.get("e") == (9, b"9")


async def test_redis_checkpoint_ttl(redis: aioredis.Redis, keys: Keys) -> None:
    cache = CheckpointCache(redis, keys)
    await cache.put("ttl", 1, b"x", ttl_s=100)
    assert 0 < await redis.pttl(keys.ckpt("ttl")) <= 100_000
    await cache.put("ttl", 2, b"y")  # no ttl: kept until replaced
    assert await redis.pttl(keys.ckpt("ttl")) == -1
    await cache.delete("ttl")


async def test_redis_checkpoint_put_many_keeps_the_newer_version_per_key(
    redis: aioredis.Redis, keys: Keys
) -> None:
    cache = CheckpointCache(redis, keys)
    assert await cache.put_many([]) == []
    await cache.put("b", 7, b"seven")
    stored = await cache.put_many(
        [("a", 1, b"\x00one\xff"), ("b", 6, b"older"), ("c", 3, b"three"), ("b", 8, b"eight")],
        ttl_s=100,
    )
    assert stored == [True, False, True, True]
    assert await cache.get("a") == (1, b"\x00one\xff")
    assert await cache.get("b") == (8, b"eight")
    assert await cache.get("c") == (3, b"three")
    assert 0 < await redis.pttl(keys.ckpt("c")) <= 100_000
    assert await cache.put_many([("c", 4, b"four")]) == [True]  # no ttl: kept until replaced
    assert await redis.pttl(keys.ckpt("c")) == -1
