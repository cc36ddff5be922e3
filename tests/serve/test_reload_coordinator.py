"""ReloadCoordinator on a real Redis (embedded by default), without Ray or Serve: announcements
reach the other replicas, which tell their older sockets to reconnect (and leave newer ones)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from serve.delivery.connection import Connection
from serve.reload import ReloadCoordinator
from storage import EventBus, Keys
from warbler.protocol import CloseCode

NO_SETTLE = {"ready": 0.0, "draining": 0.0}


class Socket:
    """A Connection with its writer running; records what it was sent."""

    def __init__(self, user_id: int) -> None:
        self.frames: list[dict[str, object]] = []
        self.conn = Connection(self._send, user_id, f"d{user_id}", max_queue=100)
        self._writer = asyncio.get_running_loop().create_task(self.conn.run_writer())

    async def _send(self, text: str) -> None:
        self.frames.append(json.loads(text))

    def reconnect_reasons(self) -> list[object]:
        return [f["reason"] for f in self.frames if f["type"] == "reconnect"]

    async def close(self) -> None:
        self.conn.stop()
        await asyncio.gather(self._writer, return_exceptions=True)


@pytest.fixture
async def keys() -> Keys:
    return Keys(f"rc{uuid.uuid4().hex[:10]}")


@pytest.fixture
async def sockets() -> AsyncIterator[list[Socket]]:
    made: list[Socket] = []
    yield made
    for s in made:
        await s.close()


def coordinator(
    redis: aioredis.Redis, keys: Keys, name: str, socks: list[Socket], window_s: float
) -> ReloadCoordinator:
    return ReloadCoordinator(
        EventBus(redis, keys),
        keys,
        name,
        lambda: [s.conn for s in socks],
        window_s=window_s,
        announce=True,
        rebalance=True,
        drain_probe=None,
        settle_s=NO_SETTLE,
    )


async def wait_for(cond: object, timeout_s: float = 10.0) -> None:
    assert callable(cond)
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.02)


async def test_a_new_replica_makes_the_others_move_their_older_sockets(
    redis: aioredis.Redis, keys: Keys, sockets: list[Socket]
) -> None:
    old_socks = [Socket(i) for i in range(5)]
    sockets += old_socks
    a = coordinator(redis, keys, "a", old_socks, window_s=0.3)
    await a.start()
    b = coordinator(redis, keys, "b", [], window_s=0.3)
    try:
        await b.start()  # announces "ready": a's sockets predate it
        await wait_for(lambda: all(s.conn.close_code is not None for s in old_socks))
        for s in old_socks:
            assert s.reconnect_reasons() == ["rebalance"]
            assert s.conn.close_code == CloseCode.SERVICE_RESTART
        assert a.told == {"rebalance": 5}
        # A socket opened after the event is left alone, and b had nothing to move.
        newer = Socket(99)
        sockets.append(newer)
        old_socks.append(newer)
        await asyncio.sleep(0.5)
        assert newer.frames == [] and b.told == {}
    finally:
        await b.close()
        await a.close()


async def test_a_socket_keeps_its_slot_and_a_drain_announces_itself(
    redis: aioredis.Redis, keys: Keys, sockets: list[Socket]
) -> None:
    socks = [Socket(i) for i in range(3)]
    sockets += socks
    # A long window: the slots are far away, so a second event must not move them earlier.
    a = coordinator(redis, keys, "a", socks, window_s=3600)
    await a.start()
    b = coordinator(redis, keys, "b", [], window_s=3600)
    c = coordinator(redis, keys, "c", [], window_s=3600)
    try:
        await b.start()
        await wait_for(lambda: len(a._schedule) == 3)
        slots = {s.conn: a._schedule.slot(s.conn) for s in socks}
        await c.start()
        await asyncio.sleep(0.3)
        assert {s.conn: a._schedule.slot(s.conn) for s in socks} == slots
        # a drains: its sockets are told "draining", before the (short) deadline.
        drain = asyncio.get_running_loop().create_task(a.begin_drain(window_s=3.0))
        await wait_for(lambda: all(s.conn.close_code is not None for s in socks))
        assert all(s.reconnect_reasons() == ["draining"] for s in socks), [s.frames for s in socks]
        drain.cancel()
    finally:
        for co in (c, b, a):
            await co.close()
