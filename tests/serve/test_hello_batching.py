"""The hello's batched work: one SQL read for the conversations of many concurrent hellos, and
one SUBSCRIBE for the channels of many concurrent attaches (real SQL, real Redis)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from actors.messages import MessageEvent
from serve.delivery.connection import Connection
from serve.delivery.hub import DeliveryHub
from serve.handlers.hello import MembershipLoader
from storage import ConversationStore, Database, EventBus, Keys, UserStore


async def _users(db: Database, uid: str, n: int) -> list[int]:
    store = UserStore(db)
    return [(await store.create_user(f"hb{i}-{uid}", "argon2-hash", f"U{i}")).id for i in range(n)]


async def test_concurrent_loads_share_one_query(db: Database, uid: str) -> None:
    a, b, c, lonely = await _users(db, uid, 4)
    convs = ConversationStore(db)
    group = await convs.create_group("g", a, [b, c])
    direct = await convs.get_or_create_direct(a, b)
    loader = MembershipLoader(convs)
    got = await asyncio.gather(*(loader.load(u) for u in (a, b, c, lonely, a)))
    assert loader.queries == 1
    assert got[0] == {group.id: "group", direct.id: "direct"}
    assert got[1] == {group.id: "group", direct.id: "direct"}
    assert got[2] == {group.id: "group"}
    assert got[3] == {}
    assert got[4] == got[0]
    # Each waiter gets its own dict: the hub mutates what it is given.
    got[0][-1] = "x"
    assert -1 not in got[4]
    # The same answer as the full summary read the REST list uses.
    full = await convs.list_user_conversations(a)
    assert {s.conversation.id: s.conversation.kind for s in full} == got[4]
    assert await convs.memberships_of([]) == {}


async def _subscribe_calls(redis: aioredis.Redis) -> int:
    stats = await redis.info("commandstats")
    entry = stats.get("cmdstat_subscribe")
    return int(entry["calls"]) if isinstance(entry, dict) else 0


async def test_concurrent_attaches_share_subscribes_and_deliver(
    redis: aioredis.Redis, uid: str
) -> None:
    keys = Keys(f"hb{uid}")
    bus = EventBus(redis, keys)
    users = list(range(1, 41))
    shared = 1000
    # Each user: a conversation of their own and one shared by all.
    memberships = {u: {shared: "group", 2000 + u: "direct"} for u in users}
    loads: list[int] = []

    async def load_conversations(user_id: int) -> dict[int, str]:
        loads.append(user_id)
        await asyncio.sleep(0)
        return dict(memberships[user_id])

    async def read_log(
        user_id: int, conv: int, after: int | None, before: int | None, limit: int
    ) -> list[MessageEvent]:
        return []

    hub = DeliveryHub(
        bus, keys, read_log=read_log, load_conversations=load_conversations, page_limit=50
    )
    await hub.start()
    received: dict[int, list[str]] = {u: [] for u in users}

    def sender(u: int) -> Callable[[str], Awaitable[None]]:
        async def send(text: str) -> None:
            received[u].append(text)

        return send

    conns = [Connection(sender(u), u, f"d{u}", max_queue=100) for u in users]
    writers = [asyncio.get_running_loop().create_task(c.run_writer()) for c in conns]
    try:
        before = await _subscribe_calls(redis)
        await asyncio.gather(*(hub.attach(c) for c in conns))
        calls = await _subscribe_calls(redis) - before
        # One command per flush, not one per channel: 40 users x 3 channels went in a few.
        assert 1 <= calls < len(users)
        assert sorted(loads) == users
        channels = [keys.user_channel(u) for u in users] + [
            keys.conv_channel(c) for c in {shared, *(2000 + u for u in users)}
        ]
        # SUBSCRIBE is sent when attach returns; Redis registers it a moment later: poll.
        counts: dict[bytes, int] = {}
        for _ in range(250):
            counts = dict(await redis.pubsub_numsub(*channels))
            if all(counts[ch.encode()] >= 1 for ch in channels):
                break
            await asyncio.sleep(0.02)
        assert all(counts[ch.encode()] >= 1 for ch in channels), counts
        # Live traffic reaches exactly the members' sockets.
        frame = {
            "type": "message", "conversation_id": 2005, "seq": 1, "sender_id": 6,
            "client_msg_id": "m1", "kind": "text", "body": "hi",
            "created_at": "2026-01-01T00:00:00Z",
        }
        await bus.publish(keys.conv_channel(2005), json.dumps(frame).encode())
        typing = {"type": "typing", "conversation_id": shared, "user_id": 1, "active": True}
        await bus.publish(keys.conv_channel(shared), json.dumps(typing).encode())
        for _ in range(200):
            if received[5] and all(received[u] for u in users if u != 1):
                break
            await asyncio.sleep(0.02)
        assert [json.loads(t)["type"] for t in received[5]] == ["message", "typing"]
        assert all(
            [json.loads(t)["type"] for t in received[u]] == ["typing"]
            for u in users
            if u not in (1, 5)
        )
        assert received[1] == []
        # Detach releases the channels nobody needs any more.
        for c in conns:
            await hub.detach(c)
        # UNSUBSCRIBE leaves in the hub's next flush and Redis applies it a moment later:
        # poll (a bound on liveness, not a timing assertion).
        remaining = -1
        for _ in range(250):
            counts = dict(await redis.pubsub_numsub(keys.conv_channel(shared)))
            remaining = counts[keys.conv_channel(shared).encode()]
            if remaining == 0:
                break
            await asyncio.sleep(0.02)
        assert remaining == 0
    finally:
        for c in conns:
            c.stop()
        await asyncio.gather(*writers, return_exceptions=True)
        await hub.close()
