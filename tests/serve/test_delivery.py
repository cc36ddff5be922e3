"""The delivery hub on real SQL and Redis (no Ray): catch-up without gaps or duplicates, gap
fill when pub/sub loses a message, dedupe of repeated events, the sender's own socket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from actors.messages import MessageEvent
from serve.delivery import Connection, DeliveryHub
from storage import (
    ConversationStore,
    Database,
    EventBus,
    GroupCommitWriter,
    Keys,
    MessageDraft,
    MessageStore,
    SeqCounter,
    UserStore,
)
from warbler.config import Settings
from warbler.protocol import message_payload


class Frames:
    """What a socket was sent."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.new = asyncio.Event()

    async def send_text(self, text: str) -> None:
        self.frames.append(json.loads(text))
        self.new.set()

    def seqs(self) -> list[int]:
        return [f["seq"] for f in self.frames if f["type"] == "message"]

    async def wait_seqs(self, n: int) -> list[int]:
        async with asyncio.timeout(10):
            while len(self.seqs()) < n:
                self.new.clear()
                await self.new.wait()
        await asyncio.sleep(0.2)  # anything extra (a duplicate) would arrive now
        return self.seqs()


def _log_reader(
    messages: MessageStore,
) -> Callable[[int, int, int | None, int | None, int], Awaitable[list[MessageEvent]]]:
    """The hub's ``ReadLog`` straight from SQL (the gateway's goes through the entities)."""

    async def read_log(
        user_id: int, cid: int, after: int | None, before: int | None, limit: int
    ) -> list[MessageEvent]:
        rows = await messages.page_messages(cid, after_seq=after, before_seq=before, limit=limit)
        return [
            MessageEvent(
                m.conversation_id, m.seq, m.sender_id, m.client_msg_id, m.kind, m.body, m.created_at
            )
            for m in rows
        ]

    return read_log


def _payload(stored: Any) -> bytes:
    """What a conversation entity publishes for a committed message."""
    return message_payload(
        stored.conversation_id,
        stored.seq,
        stored.sender_id,
        stored.client_msg_id,
        stored.kind,
        stored.body,
        stored.created_at,
    )


@pytest.fixture
async def world(
    settings: Settings, db: Database, redis: aioredis.Redis, uid: str
) -> AsyncIterator[dict[str, Any]]:
    users = UserStore(db)
    alice = await users.create_user(f"dha-{uid}", "hash", "a")
    bob = await users.create_user(f"dhb-{uid}", "hash", "b")
    conv = await ConversationStore(db).create_group("hub", alice.id, [bob.id])
    keys = Keys(f"{settings.namespace}hub{uid}")
    messages = MessageStore(db)
    writer = GroupCommitWriter(db)
    await writer.start()

    read_log = _log_reader(messages)

    async def load(user_id: int) -> dict[int, str]:
        return {conv.id: "group"}

    hub = DeliveryHub(
        EventBus(redis, keys), keys, read_log=read_log, load_conversations=load, page_limit=2
    )
    await hub.start()
    counter = SeqCounter()
    n = 0

    async def write(publish: bool = True) -> bytes:
        nonlocal n
        n += 1
        stored = await writer.append(
            MessageDraft(conv.id, alice.id, f"m{n}-{uid}", "text", {"text": f"m{n}"}), counter
        )
        payload = _payload(stored)
        if publish:
            await redis.publish(keys.conv_channel(conv.id), payload)
        return payload

    yield {
        "hub": hub,
        "conv": conv.id,
        "alice": alice.id,
        "bob": bob.id,
        "write": write,
        "redis": redis,
        "keys": keys,
        "uid": uid,
    }
    await hub.close()
    await writer.stop()


async def _attach(
    world: dict[str, Any], cursors: dict[int, int] | None
) -> tuple[Connection, Frames, asyncio.Task[None]]:
    frames = Frames()
    conn = Connection(frames.send_text, world["bob"], "dev", max_queue=1000)
    writer = asyncio.get_running_loop().create_task(conn.run_writer())
    if cursors is not None:
        conn.begin_sync()
    await world["hub"].attach(conn)
    if cursors is not None:
        await world["hub"].catch_up(
            conn,
            cursors,
            begun=True,
            before_release=lambda held, cut: frames.frames.append(
                {"type": "sync_done", "cursors": held}
            ),
        )
    return conn, frames, writer


async def test_catch_up_then_live_without_gap_or_duplicate(world: dict[str, Any]) -> None:
    for _ in range(5):
        await world["write"](publish=False)  # sent while the device was away
    conn, frames, writer = await _attach(world, {world["conv"]: 1})
    for _ in range(3):
        await world["write"]()
    seqs = await frames.wait_seqs(7)
    assert seqs == [2, 3, 4, 5, 6, 7, 8]
    done = [i for i, f in enumerate(frames.frames) if f["type"] == "sync_done"]
    assert len(done) == 1 and frames.frames[done[0]]["cursors"][world["conv"]] >= 5
    assert all(f["body"].startswith("m") for f in frames.frames if f["type"] == "message")
    conn.stop()
    writer.cancel()
    await world["hub"].detach(conn)


async def test_lost_pubsub_message_is_read_from_the_log(world: dict[str, Any]) -> None:
    conn, frames, writer = await _attach(world, {world["conv"]: 0})
    await world["write"]()
    await frames.wait_seqs(1)
    await world["write"](publish=False)  # pub/sub lost seq 2 and 3
    await world["write"](publish=False)
    again = await world["write"]()  # seq 4 arrives: the hub fills 2..3 from the log first
    assert await frames.wait_seqs(4) == [1, 2, 3, 4]
    # The same event twice (at-least-once bus) is delivered once.
    await world["redis"].publish(world["keys"].conv_channel(world["conv"]), again)
    await world["write"]()
    assert await frames.wait_seqs(5) == [1, 2, 3, 4, 5]
    conn.stop()
    writer.cancel()
    await world["hub"].detach(conn)


async def test_own_send_is_acked_not_echoed(world: dict[str, Any]) -> None:
    frames = Frames()
    conn = Connection(frames.send_text, world["alice"], "dev", max_queue=1000)
    writer = asyncio.get_running_loop().create_task(conn.run_writer())
    await world["hub"].attach(conn)
    conn.note_own_send(f"m1-{world['uid']}")  # this socket is sending m1: it gets the ack
    await world["write"]()
    await world["write"]()  # m2 came from another device of Alice: delivered
    assert await frames.wait_seqs(1) == [2]
    conn.stop()
    writer.cancel()
    await world["hub"].detach(conn)


async def test_a_gap_fill_holds_its_own_conversation_not_the_others(
    settings: Settings, db: Database, redis: aioredis.Redis, uid: str
) -> None:
    """A gap is filled from the log beside the reader loop: while conversation A's fill waits
    (here: until the test lets it go; after a host kill, the entity's failover), B's live
    messages are delivered, and A's later live messages wait behind A's fill, in order. With
    the fill inside the reader loop, B's message never arrives while A's read is held."""
    users = UserStore(db)
    alice = await users.create_user(f"dga-{uid}", "hash", "a")
    bob = await users.create_user(f"dgb-{uid}", "hash", "b")
    store = ConversationStore(db)
    a, b = [await store.create_group(f"g{i}", alice.id, [bob.id]) for i in range(2)]
    messages = MessageStore(db)
    writer = GroupCommitWriter(db)
    await writer.start()
    keys = Keys(f"{settings.namespace}gapfill{uid}")
    release = asyncio.Event()
    read = _log_reader(messages)

    async def read_log(
        user_id: int, cid: int, after: int | None, before: int | None, limit: int
    ) -> list[MessageEvent]:
        if cid == a.id:
            await release.wait()
        return await read(user_id, cid, after, before, limit)

    async def load(user_id: int) -> dict[int, str]:
        return {a.id: "group", b.id: "group"}

    hub = DeliveryHub(
        EventBus(redis, keys), keys, read_log=read_log, load_conversations=load, page_limit=10
    )
    await hub.start()
    counters = {a.id: SeqCounter(), b.id: SeqCounter()}
    n = 0

    async def write(cid: int, publish: bool = True) -> None:
        nonlocal n
        n += 1
        draft = MessageDraft(cid, alice.id, f"g{n}-{uid}", "text", {"text": f"g{n}"})
        stored = await writer.append(draft, counters[cid])
        if publish:
            await redis.publish(keys.conv_channel(cid), _payload(stored))

    frames = Frames()
    conn = Connection(frames.send_text, bob.id, "dev", max_queue=1000)
    sending = asyncio.get_running_loop().create_task(conn.run_writer())
    try:
        await hub.attach(conn)
        await write(a.id)
        await frames.wait_seqs(1)
        await write(a.id, publish=False)  # lost by pub/sub: A's seq 3 opens a gap
        await write(a.id)
        await write(b.id)  # B's seq 1: delivered although A's fill is held
        async with asyncio.timeout(10):
            while not any(f["conversation_id"] == b.id for f in frames.frames):
                frames.new.clear()
                await frames.new.wait()
        await write(a.id)  # A's seq 4: waits behind A's fill
        await asyncio.sleep(0.2)
        assert [(f["conversation_id"], f["seq"]) for f in frames.frames] == [(a.id, 1), (b.id, 1)]
        release.set()
        await frames.wait_seqs(5)
        in_a = [f["seq"] for f in frames.frames if f["conversation_id"] == a.id]
        assert in_a == [1, 2, 3, 4]
    finally:
        conn.stop()
        sending.cancel()
        await hub.detach(conn)
        await hub.close()
        await writer.stop()


async def test_tails_after_a_resubscribe_are_read_concurrently(
    settings: Settings, db: Database, redis: aioredis.Redis, uid: str
) -> None:
    """After a lost pub/sub connection the hub reads the tail of every conversation before the
    reader loop dispatches live events again: one by one, 36 conversations held every delivery
    for ~3 s (chaos bench). The log reads here wait until all of them have started, so a hub
    that reads one tail at a time never delivers them."""
    users = UserStore(db)
    alice = await users.create_user(f"dta-{uid}", "hash", "a")
    bob = await users.create_user(f"dtb-{uid}", "hash", "b")
    store = ConversationStore(db)
    convs = [await store.create_group(f"t{i}", alice.id, [bob.id]) for i in range(3)]
    messages = MessageStore(db)
    writer = GroupCommitWriter(db)
    await writer.start()
    keys = Keys(f"{settings.namespace}tails{uid}")
    all_started = asyncio.Barrier(len(convs))
    gated = False

    read = _log_reader(messages)

    async def read_log(
        user_id: int, cid: int, after: int | None, before: int | None, limit: int
    ) -> list[MessageEvent]:
        if gated:
            await all_started.wait()
        return await read(user_id, cid, after, before, limit)

    async def load(user_id: int) -> dict[int, str]:
        return {c.id: "group" for c in convs}

    hub = DeliveryHub(
        EventBus(redis, keys), keys, read_log=read_log, load_conversations=load, page_limit=10
    )
    before = {c["id"] for c in await redis.client_list(_type="pubsub")}
    await hub.start()
    frames = Frames()
    conn = Connection(frames.send_text, bob.id, "dev", max_queue=1000)
    sending = asyncio.get_running_loop().create_task(conn.run_writer())
    try:
        conn.begin_sync()
        await hub.attach(conn)
        await hub.catch_up(conn, {c.id: 0 for c in convs}, begun=True)
        counter = {c.id: SeqCounter() for c in convs}
        for c in convs:  # committed while the subscription was away: never published
            draft = MessageDraft(c.id, alice.id, f"t{c.id}-{uid}", "text", {"text": "x"})
            await writer.append(draft, counter[c.id])
        gated = True
        # Cut the hub's own pub/sub connection (the one that appeared with it); it notices,
        # resubscribes and reads every tail.
        ours = {c["id"] for c in await redis.client_list(_type="pubsub")} - before
        assert ours, "the hub's subscriber connection was not found"
        for client_id in ours:
            await redis.client_kill_filter(_id=client_id)
        assert await frames.wait_seqs(len(convs)) == [1] * len(convs)
        assert {f["conversation_id"] for f in frames.frames if f["type"] == "message"} == {
            c.id for c in convs
        }
    finally:
        conn.stop()
        sending.cancel()
        await hub.detach(conn)
        await hub.close()
        await writer.stop()
