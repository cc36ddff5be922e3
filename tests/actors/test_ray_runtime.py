"""The runtime and hosts on the session Ray cluster: batching, kill -9, recovery from SQL,
rebalancing under traffic, dedicated placement."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from actor_helpers import MakeUser

from actors import cluster
from actors.messages import Append, ConversationInfo, CreateGroup, GetInfo, MessageEvent
from actors.names import NEW_CONVERSATION_KEY
from actors.runtime import Runtime
from storage import CheckpointCache, Database, Keys, MessageStore, User
from warbler.config import Settings
from warbler.errors import ErrorCode, WarblerError

pytestmark = pytest.mark.ray


@pytest.fixture
async def hosts(ray_cluster: Any, db: Database, test_settings: Settings) -> AsyncIterator[Settings]:
    """Two pool hosts in this test's namespace; every host is stopped afterwards."""
    await cluster.start_hosts(test_settings, 2)
    yield test_settings
    await cluster.shutdown_hosts(test_settings)


@pytest.fixture
async def runtime(hosts: Settings) -> AsyncIterator[Runtime]:
    # A generous deadline: on a loaded machine a killed host can take several seconds to
    # come back, and the tests check the guarantees, not the speed.
    rt = await Runtime.connect(hosts, call_timeout_s=60.0)
    yield rt
    await rt.close()


async def new_groups(rt: Runtime, owner: User, n: int) -> list[str]:
    events = await rt.call_many(
        [(NEW_CONVERSATION_KEY, CreateGroup(owner.id, f"g{i}")) for i in range(n)]
    )
    assert all(isinstance(e, MessageEvent) and e.seq == 1 for e in events), events
    return [f"conv:{e.conversation_id}" for e in events if isinstance(e, MessageEvent)]


@dataclass
class Load:
    """Appends continuously, one call_many round after another, recording every ack."""

    rt: Runtime
    sender: int
    keys: list[str]
    prefix: str = ""
    acked: dict[str, dict[str, int]] = field(default_factory=dict)  # key -> cmid -> seq
    ack_times: dict[str, list[float]] = field(default_factory=dict)
    errors: list[WarblerError] = field(default_factory=list)
    rounds: int = 0
    _stop: bool = False

    async def run(self) -> None:
        while not self._stop:
            calls: list[tuple[str, object]] = [
                (k, Append(self.sender, f"{self.prefix}{k}-{self.rounds}", "text", {}))
                for k in self.keys
            ]
            results = await self.rt.call_many(calls)
            now = time.monotonic()
            for (key, message), result in zip(calls, results, strict=True):
                assert isinstance(message, Append)
                if isinstance(result, MessageEvent):
                    self.acked.setdefault(key, {})[message.client_msg_id] = result.seq
                    self.ack_times.setdefault(key, []).append(now)
                else:
                    assert isinstance(result, WarblerError), result
                    self.errors.append(result)
            self.rounds += 1

    def stop(self) -> None:
        self._stop = True


async def assert_log_is_exact(db: Database, load: Load) -> None:
    """Every acked append is in SQL once, with its acked seq; seqs are gapless."""
    store = MessageStore(db)
    for key in load.keys:
        cid = int(key.split(":")[1])
        rows = await store.page_messages(cid, after_seq=0, limit=1000)
        assert [m.seq for m in rows] == list(range(1, len(rows) + 1)), key
        stored = {m.client_msg_id: m.seq for m in rows if m.kind != "system"}
        for cmid, seq in load.acked.get(key, {}).items():
            assert stored.get(cmid) == seq, (key, cmid)
        assert len(stored) == len(set(stored)), key


async def test_batches_answer_in_order(runtime: Runtime, make_user: MakeUser) -> None:
    owner, stranger = await make_user("o"), await make_user("s")
    keys = await new_groups(runtime, owner, 12)
    calls: list[tuple[str, object]] = []
    for i in range(10):
        for key in keys:
            calls.append((key, Append(owner.id, f"{key}-{i}", "text", {"i": i})))
    calls.insert(5, (keys[0], Append(stranger.id, "nope", "text", {})))
    calls.insert(9, ("conv:999999999999", GetInfo(owner.id)))
    results = await runtime.call_many(calls)
    assert isinstance(results[5], WarblerError) and results[5].code == ErrorCode.NOT_MEMBER
    assert isinstance(results[9], WarblerError) and results[9].code == ErrorCode.NOT_FOUND
    seqs: dict[str, list[int]] = {}
    for (key, message), result in zip(calls, results, strict=True):
        if isinstance(message, Append) and message.sender_id == owner.id:
            assert isinstance(result, MessageEvent) and result.conversation_id == int(key[5:])
            seqs.setdefault(key, []).append(result.seq)
    assert all(s == list(range(2, 12)) for s in seqs.values())
    info = await runtime.call(keys[0], GetInfo(owner.id))
    assert isinstance(info, ConversationInfo) and info.last_seq == 11
    names = ("host-0", "host-1")
    stats = [await cluster.get_host(runtime.settings, h).stats.remote() for h in names]
    envelopes = sum(s["envelopes"] for s in stats)
    batches = sum(s["batches"] for s in stats)
    assert batches * 5 < envelopes, stats  # many envelopes per Ray call


@pytest.mark.slow
async def test_kill_9_of_a_host_loses_no_acked_append(
    runtime: Runtime, make_user: MakeUser, db: Database
) -> None:
    owner = await make_user("o")
    keys = await new_groups(runtime, owner, 16)
    shard_map = runtime.shard_map
    assert shard_map is not None
    victims = [k for k in keys if shard_map.owner(k) == "host-0"]
    assert victims
    load = Load(runtime, owner.id, keys)
    task = asyncio.ensure_future(load.run())
    await asyncio.sleep(1.0)
    host = cluster.get_host(runtime.settings, "host-0")
    pid = (await host.ping.remote())["pid"]
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    async with asyncio.timeout(60):
        while not any(t > killed_at for k in victims for t in load.ack_times.get(k, [])):
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    load.stop()
    await task
    assert (await host.ping.remote())["pid"] != pid  # Ray restarted it
    await assert_log_is_exact(db, load)
    assert not load.errors, load.errors[:3]


@pytest.mark.slow
async def test_recovery_from_sql_alone_when_redis_lost_the_checkpoints(
    runtime: Runtime, make_user: MakeUser, db: Database, redis: aioredis.Redis
) -> None:
    owner = await make_user("o")
    keys = await new_groups(runtime, owner, 8)
    for i in range(5):
        await runtime.call_many([(k, Append(owner.id, f"{k}-{i}", "text", {})) for k in keys])
    settings = runtime.settings
    for name in ("host-0", "host-1"):
        await cluster.get_host(settings, name).passivate_all.remote()
    cache = CheckpointCache(redis, Keys(settings.namespace))
    for key in keys:
        await cache.delete(key)
        assert await cache.get(key) is None
    for name in ("host-0", "host-1"):  # and no host remembers anything
        host = cluster.get_host(settings, name)
        os.kill((await host.ping.remote())["pid"], signal.SIGKILL)
    infos = await runtime.call_many([(k, GetInfo(owner.id)) for k in keys])
    assert all(isinstance(i, ConversationInfo) and i.last_seq == 6 for i in infos), infos
    events = await runtime.call_many([(k, Append(owner.id, f"{k}-x", "text", {})) for k in keys])
    assert all(isinstance(e, MessageEvent) and e.seq == 7 for e in events), events


@pytest.mark.slow
async def test_adding_and_removing_hosts_under_traffic(
    runtime: Runtime, make_user: MakeUser, db: Database
) -> None:
    owner = await make_user("o")
    keys = await new_groups(runtime, owner, 24)
    settings = runtime.settings
    # Two gateways with their own copies of the map: while a move is under way one may route
    # by the old map and the other by the new; the hosts must still never both serve a key.
    other = await Runtime.connect(settings, call_timeout_s=60.0)
    loads = [Load(runtime, owner.id, keys, prefix="a"), Load(other, owner.id, keys, prefix="b")]
    tasks = [asyncio.ensure_future(load.run()) for load in loads]
    try:
        await asyncio.sleep(0.5)
        added = await cluster.add_host(settings)
        await asyncio.sleep(0.5)
        after_add = [load.rounds for load in loads]
        await cluster.remove_host(settings, "host-0")
        await asyncio.sleep(0.5)
    finally:
        for load in loads:
            load.stop()
        await asyncio.gather(*tasks)
        await other.close()
    assert all(load.rounds > n for load, n in zip(loads, after_add, strict=True))
    shard_map = await cluster.current_map(settings)
    assert shard_map is not None and shard_map.epoch == 3
    assert shard_map.hosts == ("host-1", added)
    assert [k for k in keys if shard_map.owner(k) == added]
    # Each entity is active on its owner only.
    for key in keys:
        where = [
            name
            for name in shard_map.hosts
            if await cluster.get_host(settings, name).is_active.remote(key)
        ]
        assert where in ([], [shard_map.owner(key)]), (key, where)
    for load in loads:
        await assert_log_is_exact(db, load)
        assert not load.errors, load.errors[:3]


async def test_dedicated_placement_routes_to_its_own_host(
    runtime: Runtime, make_user: MakeUser
) -> None:
    owner = await make_user("o")
    [key] = await new_groups(runtime, owner, 1)
    settings = runtime.settings
    name = await cluster.pin_entity(settings, key)
    event = await runtime.call(key, Append(owner.id, "pinned", "text", {}))
    assert isinstance(event, MessageEvent) and event.seq == 2
    assert runtime.shard_map is not None and runtime.shard_map.owner(key) == name
    assert await cluster.get_host(settings, name).is_active.remote(key)
    for pool in ("host-0", "host-1"):
        assert not await cluster.get_host(settings, pool).is_active.remote(key)
    await cluster.unpin_entity(settings, key)
    event = await runtime.call(key, Append(owner.id, "unpinned", "text", {}))
    assert isinstance(event, MessageEvent) and event.seq == 3
