"""EventBus: publish / publish_many and the subscriber, over real Redis pub/sub."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from storage import ChannelListener, EmbeddedRedis, EventBus, Keys, Subscriber, connect_redis
from storage.redis import process_alive

# Generous bounds for liveness only: a missing message fails the test instead of hanging it.
WAIT_S = 10.0


PROBE = b"__probe__"


async def _take(sub: Subscriber, n: int) -> list[tuple[str, bytes]]:
    """The next ``n`` events, skipping the probes sent by ``_wait_subscribed``."""
    got: list[tuple[str, bytes]] = []
    async for item in sub:
        if item[1] != PROBE:
            got.append(item)
        if len(got) == n:
            break
    return got


async def _wait_subscribed(bus: EventBus, channel: str) -> None:
    # SUBSCRIBE returns before the server registers it; publish until someone hears.
    for _ in range(200):
        if await bus.publish(channel, PROBE):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"nobody subscribed to {channel}")


async def test_publish_and_receive(redis: aioredis.Redis, keys: Keys) -> None:
    bus = EventBus(redis, keys)
    async with bus.subscriber() as sub:
        await sub.subscribe(keys.conv_channel(1), keys.user_channel(2))
        assert sub.channels == {keys.conv_channel(1), keys.user_channel(2)}
        await _wait_subscribed(bus, keys.conv_channel(1))
        await _wait_subscribed(bus, keys.user_channel(2))
        reader = asyncio.create_task(_take(sub, 3))
        assert await bus.publish(keys.conv_channel(1), b"m1") == 1
        await bus.publish_many(
            [(keys.user_channel(2), b"\x00binary\xff"), (keys.conv_channel(1), b"m2")]
        )
        got = await asyncio.wait_for(reader, WAIT_S)
    assert got == [
        (keys.conv_channel(1), b"m1"),
        (keys.user_channel(2), b"\x00binary\xff"),
        (keys.conv_channel(1), b"m2"),
    ]


async def test_publish_many_keeps_order(redis: aioredis.Redis, keys: Keys) -> None:
    bus = EventBus(redis, keys)
    channel = keys.conv_channel(9)
    async with bus.subscriber() as sub:
        await sub.subscribe(channel)
        await _wait_subscribed(bus, channel)
        reader = asyncio.create_task(_take(sub, 200))
        await bus.publish_many([(channel, str(i).encode()) for i in range(100)])
        await bus.publish_many([])
        await bus.publish_many([(channel, str(i).encode()) for i in range(100, 200)])
        got = await asyncio.wait_for(reader, WAIT_S)
    assert [p for _, p in got] == [str(i).encode() for i in range(200)]


async def test_unsubscribe_stops_delivery(redis: aioredis.Redis, keys: Keys) -> None:
    bus = EventBus(redis, keys)
    a, b = keys.conv_channel(1), keys.conv_channel(2)
    async with bus.subscriber() as sub:
        await sub.subscribe(a, b)
        await _wait_subscribed(bus, a)
        await _wait_subscribed(bus, b)
        await sub.unsubscribe(a)
        for _ in range(200):  # wait until the server has dropped the subscription
            if await bus.publish(a, PROBE) == 0:
                break
            await asyncio.sleep(0.01)
        assert await bus.publish(a, b"lost") == 0
        assert await bus.publish(b, b"kept") == 1
        received = await asyncio.wait_for(_take(sub, 1), WAIT_S)
    assert received == [(b, b"kept")]


async def test_close_ends_iteration(redis: aioredis.Redis, keys: Keys) -> None:
    bus = EventBus(redis, keys)
    sub = bus.subscriber()
    await sub.subscribe(keys.user_channel(1))
    reader = asyncio.create_task(_take(sub, 1))
    await asyncio.sleep(0.05)
    await sub.close()
    assert await asyncio.wait_for(reader, WAIT_S) == []


async def test_namespaces_do_not_cross(redis: aioredis.Redis, keys: Keys) -> None:
    other = Keys(keys.namespace + "x")
    assert await EventBus(redis, other).publish(other.conv_channel(1), b"x") == 0


async def test_channel_listener_resubscribes_after_a_lost_connection(
    redis: aioredis.Redis, keys: Keys
) -> None:
    bus = EventBus(redis, keys)
    channel = keys.revocations_channel()
    heard: list[bytes] = []
    listener = ChannelListener(bus, channel, heard.append)
    await listener.start()

    async def hear(payload: bytes) -> None:
        # Publish until it is heard: SUBSCRIBE (and a resubscribe) lands a moment later.
        for _ in range(int(WAIT_S / 0.05)):
            await bus.publish(channel, payload)
            if payload in heard:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{payload!r} never heard")

    try:
        await hear(b"before")
        # Drop its pub/sub connection under it, as a Redis restart or a network cut would.
        subscriber = listener._subscriber
        assert subscriber is not None
        connection = subscriber._pubsub.connection
        assert connection is not None
        await connection.disconnect()
        await hear(b"after")
        assert listener._subscriber is not subscriber  # a new subscription, made by itself
    finally:
        await listener.close()


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own, unsupervised: the test kills it and decides when it is back."""
    with tempfile.TemporaryDirectory(prefix="wrb-") as d:
        server = EmbeddedRedis(Path(d) / "redis")
        server.start(supervise=False)
        yield server
        server.stop()


def _kill(server: EmbeddedRedis) -> None:
    pid = server.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + WAIT_S
    while process_alive(pid):
        assert time.monotonic() < deadline
        time.sleep(0.01)


async def test_a_dead_redis_ends_iteration_with_an_error(
    own_redis: EmbeddedRedis, keys: Keys
) -> None:
    client = connect_redis(own_redis.url)
    bus = EventBus(client, keys)
    try:
        sub = bus.subscriber()
        await sub.subscribe(keys.conv_channel(1))
        _kill(own_redis)
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(_take(sub, 1), WAIT_S)
        assert sub.lost
        # A subscriber whose first SUBSCRIBE fails does not wait forever for one either.
        fresh = bus.subscriber()
        with pytest.raises((RedisError, OSError)):
            await fresh.subscribe(keys.conv_channel(1))
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(_take(fresh, 1), WAIT_S)
        await sub.close()
        await fresh.close()
    finally:
        await client.aclose()


async def test_a_silent_reconnect_ends_iteration(redis: aioredis.Redis, keys: Keys) -> None:
    # redis-py's retry reconnects and resubscribes within one read; what was published in
    # between is lost, so the subscriber must say so.
    bus = EventBus(redis, keys)
    sub = bus.subscriber()
    await sub.subscribe(keys.conv_channel(3))
    connection = sub._pubsub.connection
    assert connection is not None
    await connection.disconnect()
    await connection.connect()
    assert sub.lost
    with pytest.raises(RedisConnectionError):
        await asyncio.wait_for(_take(sub, 1), WAIT_S)
    await sub.close()


async def test_channel_listener_outlives_seconds_without_redis(
    own_redis: EmbeddedRedis, keys: Keys
) -> None:
    client = connect_redis(own_redis.url)
    bus = EventBus(client, keys)
    channel = keys.revocations_channel()
    heard: list[bytes] = []
    listener = ChannelListener(bus, channel, heard.append)
    await listener.start()

    async def hear(payload: bytes) -> None:
        for _ in range(int(WAIT_S / 0.05)):
            with contextlib.suppress(RedisError):
                await bus.publish(channel, payload)
            if payload in heard:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{payload!r} never heard")

    try:
        await hear(b"before")
        _kill(own_redis)
        await asyncio.sleep(2.0)  # several resubscribe attempts fail meanwhile
        own_redis.start(supervise=False)  # the same socket path, as a supervisor restarts it
        await hear(b"after")
    finally:
        await listener.close()
        await client.aclose()


async def test_subscribing_again_after_an_idle_empty_spell_keeps_the_subscriber(
    redis_url: str, keys: Keys
) -> None:
    """The last channel unsubscribed, the connection idle past its health-check interval,
    then a new SUBSCRIBE while the reader waits in get_message: redis-py's health check used
    to read the socket under the reader ("readuntil() called while another coroutine is
    already waiting") and the subscriber was lost (a replica's next hello after 30 s quiet)."""
    # A check interval well under the reader's 1 s poll: most of each poll the check is due.
    client = aioredis.Redis.from_url(redis_url, health_check_interval=0.2)
    try:
        bus = EventBus(client, keys)
        async with bus.subscriber() as sub:
            first, second = keys.conv_channel(1), keys.conv_channel(2)
            await sub.subscribe(first)
            await _wait_subscribed(bus, first)
            reader = asyncio.create_task(_take(sub, 1))
            await sub.unsubscribe(first)
            for _ in range(200):  # the reader reads the confirmation
                if not sub.channels:
                    break
                await asyncio.sleep(0.01)
            assert sub.channels == set()
            await asyncio.sleep(2.5)  # idle past the interval, nothing subscribed
            await sub.subscribe(second)
            await _wait_subscribed(bus, second)
            await bus.publish(second, b"after")
            assert await asyncio.wait_for(reader, WAIT_S) == [(second, b"after")]
            assert not sub.lost
    finally:
        await client.aclose()
