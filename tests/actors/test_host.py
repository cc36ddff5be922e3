"""The host core without Ray: batches, mailboxes, ownership, checkpoints, passivation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from actor_helpers import MakeUser

from actors.context import EntityContext
from actors.directory import initial_map, with_host_added, with_host_removed
from actors.directory_store import DirectoryStore
from actors.host import HostCore
from actors.messages import (
    Append,
    ConnectDevice,
    ConversationInfo,
    CreateGroup,
    GetInfo,
    GetSession,
    MessageEvent,
)
from actors.names import NEW_CONVERSATION_KEY, conv_key, user_key
from actors.wire import Redirect
from storage import CheckpointCache, CheckpointStore, Database, Keys, User
from warbler.config import Settings
from warbler.errors import ErrorCode, WarblerError

HostFactory = Callable[..., Awaitable[HostCore]]


async def batch(host: HostCore, envelopes: list[tuple[str, object]]) -> list[Any]:
    _, results = await host.handle_batch(host.ownership.epoch, envelopes)
    return results


async def new_group(host: HostCore, owner: User, members: list[User]) -> str:
    create = CreateGroup(owner.id, "g", tuple(m.id for m in members))
    [redirect] = await batch(host, [(NEW_CONVERSATION_KEY, create)])
    assert isinstance(redirect, Redirect)
    [event] = await batch(host, [(redirect.key, redirect.message)])
    assert isinstance(event, MessageEvent)
    return redirect.key


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def test_a_batch_answers_in_order_with_errors_per_envelope(
    host_factory: HostFactory, make_user: MakeUser
) -> None:
    host = await host_factory()
    owner, stranger = await make_user("o"), await make_user("s")
    key = await new_group(host, owner, [])
    results = await batch(
        host,
        [
            (key, Append(owner.id, "a1", "text", {"t": 1})),
            (key, Append(stranger.id, "s1", "text", {"t": 2})),
            (key, GetInfo(owner.id)),
            ("bogus:key", GetInfo(owner.id)),
            (conv_key(10**15), GetInfo(owner.id)),
            (key, Append(owner.id, "a2", "text", {"t": 3})),
            (user_key(owner.id), GetSession()),
        ],
    )
    assert [type(r).__name__ for r in results] == [
        "MessageEvent",
        "WarblerError",
        "ConversationInfo",
        "WarblerError",
        "WarblerError",
        "MessageEvent",
        "SessionInfo",
    ]
    assert [results[i].code for i in (1, 3, 4)] == [
        ErrorCode.NOT_MEMBER,
        ErrorCode.BAD_REQUEST,
        ErrorCode.NOT_FOUND,
    ]
    assert (results[0].seq, results[5].seq) == (2, 3)
    # GetInfo was queued behind the first append in the mailbox, but the append's commit
    # does not hold the mailbox: the info may or may not include it.
    assert isinstance(results[2], ConversationInfo) and results[2].last_seq in (1, 2, 3)
    assert not host.is_active(conv_key(10**15))  # a failed activation leaves nothing behind


async def test_mailbox_order_is_arrival_order_across_a_batch(
    host_factory: HostFactory, make_user: MakeUser
) -> None:
    host = await host_factory()
    owner = await make_user("o")
    keys = [await new_group(host, owner, []) for _ in range(3)]
    envelopes: list[tuple[str, object]] = [
        (keys[i % 3], Append(owner.id, f"m{i}", "text", {"i": i})) for i in range(90)
    ]
    results = await batch(host, envelopes)
    for k in keys:
        seqs = [r.seq for (key, _), r in zip(envelopes, results, strict=True) if key == k]
        assert seqs == list(range(2, 32))
    assert host.ctx.writer.batches < 90  # the appends shared group commits
    assert host.stats()["backlog"] == 0


async def test_keys_of_other_hosts_get_stale_epoch(
    host_factory: HostFactory, test_settings: Settings, redis: aioredis.Redis
) -> None:
    two = initial_map(["host-0", "host-1"], test_settings.num_shards)
    await DirectoryStore(redis, Keys(test_settings.namespace)).create(two)
    host = await host_factory("host-0")
    theirs = next(user_key(i) for i in range(1, 1000) if two.owner(user_key(i)) == "host-1")
    ours = next(user_key(i) for i in range(1, 1000) if two.owner(user_key(i)) == "host-0")
    stale, fine = await batch(host, [(theirs, GetSession()), (ours, GetSession())])
    assert isinstance(stale, WarblerError) and stale.code == ErrorCode.STALE_EPOCH
    assert stale.details["epoch"] == 1
    assert not isinstance(fine, WarblerError)
    assert not host.is_active(theirs)


async def test_idle_entities_are_checkpointed_and_passivated(
    host_factory: HostFactory, make_user: MakeUser, db: Database, redis: aioredis.Redis
) -> None:
    host = await host_factory(idle_passivate_s=0.3, redis_checkpoint_every_s=0.05)
    owner = await make_user("o")
    key = await new_group(host, owner, [])
    for i in range(3):
        await batch(host, [(key, Append(owner.id, f"i{i}", "text", {}))])
    await eventually(lambda: not host.is_active(key))
    hot = await CheckpointCache(redis, host.ctx.keys).get(key)
    durable = await CheckpointStore(db).get(key)
    assert hot is not None and hot[0] == 4
    assert durable is not None and durable.version == 4
    before = host.activations
    [event] = await batch(host, [(key, Append(owner.id, "again", "text", {}))])
    assert event.seq == 5 and host.activations == before + 1


def fresh_user_keys(uid: str, n: int) -> list[str]:
    """Session keys no earlier run has used (SQL checkpoints outlive a test's namespace)."""
    base = int(uid, 16) * 100
    return [user_key(base + i) for i in range(1, n + 1)]


async def test_memory_bound_passivates_least_recently_used(
    host_factory: HostFactory, uid: str
) -> None:
    host = await host_factory(max_active_entities=3)
    keys = fresh_user_keys(uid, 6)
    for key in keys:
        [info] = await batch(host, [(key, ConnectDevice("phone", "replica-1"))])
        assert info.devices
    await eventually(lambda: host.active_count <= 3)
    assert [host.is_active(k) for k in keys] == [False, False, False, True, True, True]
    # The evicted sessions were checkpointed: they come back with their devices.
    [info] = await batch(host, [(keys[0], GetSession())])
    assert [d.device_id for d in info.devices] == ["phone"]


async def test_release_finishes_in_flight_then_hands_keys_over(
    host_factory: HostFactory, make_user: MakeUser, test_settings: Settings
) -> None:
    host = await host_factory("host-0")
    owner = await make_user("o")
    keys = [await new_group(host, owner, []) for _ in range(8)]
    new_map = with_host_added(host.ownership.maps[0], "host-1")
    moving = [k for k in keys if new_map.owner(k) == "host-1"]
    staying = [k for k in keys if new_map.owner(k) == "host-0"]
    assert moving and staying, "8 keys over 2 hosts: both sides non-empty (stable hash)"
    in_flight = asyncio.ensure_future(
        batch(host, [(k, Append(owner.id, f"f{k}", "text", {})) for k in keys])
    )
    await asyncio.sleep(0)  # the batch is accepted before the release starts
    released = await host.release(new_map)
    results = await in_flight
    assert all(isinstance(r, MessageEvent) and r.seq == 2 for r in results)
    assert released == len(moving)
    assert not any(host.is_active(k) for k in moving)
    after = await batch(host, [(k, GetInfo(owner.id)) for k in moving + staying])
    assert all(r.code == ErrorCode.STALE_EPOCH for r in after[: len(moving)])
    assert all(isinstance(r, ConversationInfo) for r in after[len(moving) :])


async def test_activation_from_sql_alone_after_redis_lost_the_checkpoints(
    host_factory: HostFactory, make_user: MakeUser, redis: aioredis.Redis
) -> None:
    first = await host_factory("host-0")
    owner = await make_user("o")
    keys = [await new_group(first, owner, []) for _ in range(4)]
    for key in keys:
        await batch(first, [(key, Append(owner.id, f"x{key}", "text", {}))])
    await first.passivate_where(lambda key: True)  # SQL + Redis checkpoints
    cache = CheckpointCache(redis, first.ctx.keys)
    for key in keys:
        await cache.delete(key)
    # A fresh host (as after a restart) rebuilds every entity from SQL alone.
    second = await host_factory("host-0")
    infos = await batch(second, [(k, GetInfo(owner.id)) for k in keys])
    assert [i.last_seq for i in infos] == [2] * 4
    events = await batch(second, [(k, Append(owner.id, f"y{k}", "text", {})) for k in keys])
    assert [e.seq for e in events] == [3] * 4


async def test_no_host_serves_a_moving_key_until_the_move_commits(
    host_factory: HostFactory, make_user: MakeUser, test_settings: Settings, redis: aioredis.Redis
) -> None:
    store = DirectoryStore(redis, Keys(test_settings.namespace))
    old = initial_map(["host-a"], test_settings.num_shards)
    await store.create(old)
    a = await host_factory("host-a")
    owner = await make_user("o")
    keys = [await new_group(a, owner, []) for _ in range(6)]
    new = with_host_added(old, "host-b")
    b = await host_factory("host-b")
    moving = [k for k in keys if new.owner(k) == "host-b"]
    assert moving

    async def ask_host(host: HostCore, epoch: int, key: str) -> Any:
        _, [result] = await host.handle_batch(epoch, [(key, GetInfo(owner.id))])
        return result

    def stale(result: Any) -> bool:
        return isinstance(result, WarblerError) and result.code == ErrorCode.STALE_EPOCH

    # Steps 1-2: pending recorded, the old owner released. Callers with either map are
    # refused by both hosts, and a host starting now (a restart) refuses too.
    await store.begin(old.epoch, new)
    await a.release(new)
    late = await host_factory("host-b")
    for key in moving:
        assert not a.is_active(key)
        assert stale(await ask_host(a, 1, key))
        assert stale(await ask_host(b, 2, key))  # b reloads the map: the move is pending
        assert stale(await ask_host(late, 2, key))
    # Step 3: committed. The new owner serves (it reloads on the caller's newer epoch).
    await store.commit(new)
    for key in moving:
        assert isinstance(await ask_host(b, 2, key), ConversationInfo)
        assert stale(await ask_host(a, 2, key))


async def test_a_failover_and_the_dead_hosts_restart_never_both_serve_a_shard(
    host_factory: HostFactory,
    make_user: MakeUser,
    test_settings: Settings,
    db: Database,
    redis: aioredis.Redis,
) -> None:
    store = DirectoryStore(redis, Keys(test_settings.namespace))
    old = initial_map(["host-a", "host-b"], test_settings.num_shards)
    await store.create(old)
    started: list[HostCore] = []

    async def incarnation(name: str, number: int) -> HostCore:
        host = HostCore(name, EntityContext.build(test_settings, db, redis), store)
        await host.start(number)
        started.append(host)
        return host

    try:
        hosts = {"host-a": await incarnation("host-a", 0), "host-b": await host_factory("host-b")}
        b = hosts["host-b"]
        new = with_host_removed(old, "host-a")
        owner = await make_user("o")
        moving = []
        for _ in range(8):
            # "conv:new" runs on any host; the new group's first command goes to its owner.
            create = CreateGroup(owner.id, "g", ())
            [redirect] = await batch(b, [(NEW_CONVERSATION_KEY, create)])
            assert isinstance(redirect, Redirect)
            here = hosts[old.owner(redirect.key)]
            [event] = await batch(here, [(redirect.key, redirect.message)])
            assert isinstance(event, MessageEvent)
            if here is not b:
                moving.append(redirect.key)
        assert moving

        # Ray restarts host-a as incarnation 1; the restart registers first: the failover is
        # refused (nothing written) and the restarted host serves its shards.
        first = await incarnation("host-a", 1)
        assert not await store.begin_failover(old.epoch, new, "host-a", restarts=1)
        assert await store.load() == (old, None)
        assert await store.failed_over() == []
        assert all(first.ownership.owns(k) for k in moving)

        # host-a dies again (Ray restarts it as incarnation 2); this time the failover is
        # first: the restart reads the pending map and serves none of the moved shards, before
        # and after the commit; the heir serves them once committed.
        assert await store.begin_failover(old.epoch, new, "host-a", restarts=2)
        assert await store.failed_over() == ["host-a"]
        second = await incarnation("host-a", 2)
        assert not any(second.ownership.owns(k) for k in moving)
        await store.commit(new)
        await b.adopt(new)
        await second.refresh_map()
        for key in moving:
            assert not second.ownership.owns(key) and b.ownership.owns(key)
            [info] = await batch(b, [(key, GetInfo(owner.id))])
            assert isinstance(info, ConversationInfo)
        # A failover of an incarnation that is not the newest one is refused too.
        assert not await store.begin_failover(new.epoch, new, "host-a", restarts=2)
        await store.clear_failed("host-a")
        assert await store.failed_over() == []
    finally:
        for host in started:
            await host.stop()


async def test_a_suspended_handler_keeps_later_messages_in_order(
    host_factory: HostFactory, uid: str
) -> None:
    host = await host_factory()
    [key] = fresh_user_keys(uid, 1)
    # ConnectDevice waits on Redis (the mailbox suspends); the reads queued behind it must
    # see the devices in arrival order.
    results = await batch(
        host,
        [
            (key, ConnectDevice("d1", "r")),
            (key, GetSession()),
            (key, ConnectDevice("d2", "r")),
            (key, GetSession()),
        ],
    )
    assert [d.device_id for d in results[1].devices] == ["d1"]
    assert [d.device_id for d in results[3].devices] == ["d1", "d2"]
