"""The SDK against a real gateway: two users chatting, history, token refresh, groups, errors,
and exactly-once delivery to the application across dropped sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypeVar

import pytest

from client import WarblerClient
from client.events import ConnectionEvent, Event
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import (
    ConversationEventFrame,
    MessageFrame,
    ReceiptFrame,
    SearchPagePublic,
)

pytestmark = pytest.mark.ray

PASSWORD = "correct horse battery"
Login = Callable[[str], AbstractAsyncContextManager[WarblerClient]]


@pytest.fixture
def login(gateway_url: str, uid: str) -> Login:
    """``async with login("alice") as client``: a registered, connected client for a new user."""

    @asynccontextmanager
    async def make(name: str) -> AsyncIterator[WarblerClient]:
        async with WarblerClient(gateway_url) as client:
            await client.register(f"{name}_{uid}", PASSWORD, name.capitalize())
            await client.connect()
            yield client

    return make


T = TypeVar("T")


async def next_of(client: WarblerClient, kind: type[T], timeout_s: float = 20.0) -> T:
    """The next event of a type, skipping others."""
    while True:
        event = await client.next_event(timeout_s)
        if isinstance(event, kind):
            return event


async def until(
    client: WarblerClient, done: Callable[[Event], bool], timeout_s: float = 30.0
) -> list[Event]:
    """Every event up to and including the first for which ``done`` is true."""
    out = [await client.next_event(timeout_s)]
    while not done(out[-1]):
        out.append(await client.next_event(timeout_s))
    return out


def only_messages(events: list[Event]) -> list[MessageFrame]:
    """The messages among events."""
    return [e for e in events if isinstance(e, MessageFrame)]


async def messages(client: WarblerClient, n: int, timeout_s: float = 30.0) -> list[MessageFrame]:
    """The next n messages the application sees."""
    return [await next_of(client, MessageFrame, timeout_s) for _ in range(n)]


def drain(client: WarblerClient) -> list[Event]:
    """Every event already queued (without waiting)."""
    out: list[Event] = []
    queue = client._events
    while not queue.empty():
        item = queue.get_nowait()
        assert item is not None and not isinstance(item, BaseException)
        out.append(item)
    return out


async def test_two_users_exchange_messages_and_receipts(login: Login, uid: str) -> None:
    async with login("alice") as alice, login("bob") as bob:
        sent = await alice.send("hi Bob", to_user=f"bob_{uid}")
        assert sent.seq >= 1 and sent.sender_id == alice.user_id

        got = await next_of(bob, MessageFrame)
        assert (got.conversation_id, got.seq) == (sent.conversation_id, sent.seq)
        assert got.body == "hi Bob"
        assert got.sender_id == alice.user_id
        # The sender's own stream carries its message too (from the ack), exactly once.
        own = await next_of(alice, MessageFrame)
        assert (own.conversation_id, own.seq) == (sent.conversation_id, sent.seq)

        reply = await bob.send("hello Alice", conversation_id=sent.conversation_id)
        assert reply.seq == sent.seq + 1
        got = await next_of(alice, MessageFrame)
        assert (got.seq, got.body, got.sender_id) == (reply.seq, "hello Alice", bob.user_id)

        await alice.mark_read(sent.conversation_id, reply.seq)
        receipt = await next_of(bob, ReceiptFrame)
        while receipt.user_id != alice.user_id:
            receipt = await next_of(bob, ReceiptFrame)
        assert (receipt.conversation_id, receipt.read_seq) == (sent.conversation_id, reply.seq)

        summaries = {c.id: c for c in await bob.list_conversations()}
        direct = summaries[sent.conversation_id]
        assert direct.kind == "direct" and direct.peer_id == alice.user_id
        assert direct.last_seq == reply.seq


async def test_send_is_idempotent_by_client_msg_id(login: Login, uid: str) -> None:
    async with login("alice") as alice, login("bob") as bob:
        first = await alice.send("once", to_user=bob.user_id, client_msg_id=f"fixed-{uid}")
        again = await alice.send("once", to_user=bob.user_id, client_msg_id=f"fixed-{uid}")
        assert (again.conversation_id, again.seq) == (first.conversation_id, first.seq)
        page = await bob.history(first.conversation_id)
        assert [m.body for m in page.messages].count("once") == 1


async def test_history_pages_both_ways(login: Login, uid: str) -> None:
    async with login("alice") as alice, login("bob") as bob:
        conv = (await alice.open_direct(bob.user_id)).id
        seqs = [(await alice.send(f"m{i}", conversation_id=conv)).seq for i in range(25)]
        assert seqs == list(range(seqs[0], seqs[0] + 25))

        newest = await bob.history(conv, limit=10)
        assert [m.seq for m in newest.messages] == seqs[-10:] and newest.has_more
        older = await bob.history(conv, before_seq=newest.messages[0].seq, limit=10)
        assert [m.seq for m in older.messages] == seqs[-20:-10]
        forward = await bob.history(conv, after_seq=seqs[4], limit=5)
        assert [m.seq for m in forward.messages] == seqs[5:10]
        everything = [m.seq async for m in bob.iter_history(conv, page=7)]
        assert everything == list(range(1, seqs[-1] + 1))


async def test_search_pages_with_the_cursor_and_filters_by_conversation(
    login: Login, uid: str
) -> None:
    async with login("alice") as alice, login("bob") as bob:
        word = f"quince{uid}"
        first = await alice.send(f"First {word}, then tea", to_user=bob.user_id)
        direct = first.conversation_id
        group = await alice.create_group("Fruit", [bob.user_id])
        for i in range(4):
            await bob.send(f"{word} number {i}", conversation_id=group.id)
        await alice.send("nothing to find here", conversation_id=direct)

        page = await alice.search(word, limit=3)
        assert isinstance(page, SearchPagePublic)
        assert [(h.conversation_id, h.body) for h in page.hits] == [
            (group.id, f"{word} number {i}") for i in (3, 2, 1)
        ]
        top = page.hits[0]
        assert top.sender_id == bob.user_id and top.created_at.tzinfo is not None
        assert [top.snippet[a:b] for a, b in top.highlights] == [word]
        assert page.next is not None
        rest = await alice.search(word, limit=3, cursor=page.next)
        assert [h.body for h in rest.hits] == [f"{word} number 0", f"First {word}, then tea"]
        assert rest.next is None
        assert [h.conversation_id for h in rest.hits] == [group.id, direct]

        every = [h.body async for h in bob.iter_search(word, page=2)]
        assert every == [h.body for h in page.hits + rest.hits]
        only = await bob.search(f"{word} TEA", conversation_id=direct)
        assert [(h.seq, h.body) for h in only.hits] == [(first.seq, f"First {word}, then tea")]

        # Refused by the server (422 problem JSON), as clear errors.
        with pytest.raises(WarblerError) as err:
            await alice.search("?!")
        assert err.value.code is ErrorCode.VALIDATION and "no words" in err.value.message
        with pytest.raises(WarblerError) as err:
            await alice.search(word, cursor="not-a-cursor")
        assert err.value.code is ErrorCode.VALIDATION and err.value.status == 422


async def test_expired_and_rejected_access_tokens_are_refreshed(login: Login) -> None:
    async with login("alice") as alice:
        tokens = alice.rest.tokens
        assert tokens is not None
        # About to expire: refreshed before the call (refresh tokens rotate).
        tokens.access_expires_at = 0.0
        assert (await alice.rest.me()).id == alice.user_id
        refreshed = alice.rest.tokens
        assert refreshed is not None and refreshed.refresh_token != tokens.refresh_token
        # Refused by the server (401): refreshed once, then the call is retried.
        refreshed.access_token = "not-a-valid-token"
        assert (await alice.rest.me()).id == alice.user_id
        assert alice.rest.tokens is not None
        assert alice.rest.tokens.access_token != "not-a-valid-token"
        # The socket also reconnects with a bad token in hand: refresh, then resume.
        alice.rest.tokens.access_token = "not-a-valid-token-either"
        opens = alice.reconnects
        await alice.reconnect()
        for _ in range(200):
            if alice.reconnects > opens and alice.connected:
                break
            await asyncio.sleep(0.05)
        assert alice.reconnects > opens and alice.connected


async def test_a_device_logged_out_everywhere_stops_with_a_clear_error(
    gateway_url: str, login: Login, uid: str
) -> None:
    async with login("alice") as laptop, WarblerClient(gateway_url) as phone:
        await phone.login(f"alice_{uid}", PASSWORD)
        await phone.connect()
        await laptop.logout(all_devices=True)
        # The phone's socket stays up while its access token lasts; once that lapses, the next
        # socket needs a refresh, which the revoked refresh token cannot get.
        assert phone.rest.tokens is not None
        phone.rest.tokens.access_expires_at = 0.0
        await phone.reconnect()
        with pytest.raises(WarblerError) as err:
            while True:
                await phone.next_event(30)
        assert err.value.code is ErrorCode.UNAUTHENTICATED
        with pytest.raises(WarblerError) as err:
            await phone.send("still there?", to_user=f"alice_{uid}")
        assert err.value.code is ErrorCode.UNAUTHENTICATED


async def test_groups_members_and_membership_events(login: Login, uid: str) -> None:
    async with login("alice") as alice, login("bob") as bob, login("carol") as carol:
        group = await alice.create_group("Team", [f"bob_{uid}"])
        assert {m.user_id for m in group.members} == {alice.user_id, bob.user_id}
        hello = await alice.send("hello team", conversation_id=group.id)

        # Bob joined with the group: he gets the membership event, and the group's messages
        # from its first (system) one on, in order, whichever comes first.
        def bob_done(e: Event) -> bool:
            return isinstance(e, MessageFrame) and e.seq == hello.seq

        events = await until(bob, bob_done)
        added = [e for e in events if isinstance(e, ConversationEventFrame)]
        if not added:
            added = [await next_of(bob, ConversationEventFrame)]
        assert (added[0].event, added[0].conversation_id) == ("added", group.id)
        seen = only_messages(events)
        assert [m.seq for m in seen] == list(range(1, hello.seq + 1))
        assert seen[0].kind == "system" and seen[-1].body == "hello team"

        updated = await alice.add_members(group.id, [carol.user_id])
        assert carol.user_id in {m.user_id for m in updated.members}
        late = await alice.send("welcome carol", conversation_id=group.id)

        def carol_done(e: Event) -> bool:
            return isinstance(e, MessageFrame) and e.seq == late.seq

        events = await until(carol, carol_done)
        assert [m.seq for m in only_messages(events)] == list(range(1, late.seq + 1))

        unread = {c.id: c.unread for c in await carol.list_conversations()}
        assert unread[group.id] == late.seq


async def test_bad_input_is_refused_with_clear_errors(login: Login, uid: str) -> None:
    async with login("alice") as alice, login("bob") as bob, login("mallory") as mallory:
        conv = (await alice.send("private", to_user=bob.user_id)).conversation_id
        with pytest.raises(WarblerError) as err:
            await mallory.send("let me in", conversation_id=conv)
        assert err.value.code is ErrorCode.NOT_MEMBER
        with pytest.raises(WarblerError) as err:
            await mallory.history(conv)
        assert err.value.code is ErrorCode.NOT_MEMBER
        with pytest.raises(WarblerError) as err:
            await alice.send("hi", to_user=f"nobody_{uid}")
        assert err.value.code is ErrorCode.NOT_FOUND
        with pytest.raises(WarblerError) as err:
            await alice.send("", conversation_id=conv)
        assert err.value.code is ErrorCode.VALIDATION
        with pytest.raises(WarblerError) as err:
            await alice.register(f"alice_{uid}", PASSWORD)
        assert err.value.code is ErrorCode.USERNAME_TAKEN
        # Nothing above was stored.
        assert [m.body for m in (await alice.history(conv)).messages] == ["private"]


async def test_dropped_sockets_lose_and_repeat_nothing(login: Login) -> None:
    """Bob's socket is dropped again and again while Alice sends: Bob's application still sees
    every message once, in order."""
    async with login("alice") as alice, login("bob") as bob:
        conv = (await alice.open_direct(bob.user_id)).id
        total = 60

        async def send_all() -> list[int]:
            return [(await alice.send(f"n{i}", conversation_id=conv)).seq for i in range(total)]

        async def chaos() -> None:
            for _ in range(6):
                await asyncio.sleep(0.15)
                await bob.reconnect()

        seqs, _ = await asyncio.gather(send_all(), chaos())
        got = await messages(bob, total)
        assert [m.seq for m in got] == seqs == sorted(seqs)
        assert [m.body for m in got] == [f"n{i}" for i in range(total)]
        assert bob.reconnects >= 1
        await asyncio.sleep(0.5)
        assert not [e for e in drain(bob) if isinstance(e, MessageFrame)], "duplicates seen"
        assert bob.cursors[conv] == seqs[-1]


async def test_a_gap_in_the_live_stream_is_filled_from_history(login: Login) -> None:
    """A live message that skips seqs (a lost delivery) makes the client fetch the missing ones
    before yielding it."""
    async with login("alice") as alice, login("bob") as bob:
        conv = (await alice.open_direct(bob.user_id)).id
        sent = [await alice.send(f"g{i}", conversation_id=conv) for i in range(5)]
        got = await messages(bob, 5)
        assert [m.seq for m in got] == [m.seq for m in sent]
        # Rewind Bob's cursor as if the last three deliveries had been lost, then deliver the
        # next live message: the client must yield the three from history first.
        bob._sequencer._cursors[conv] = sent[1].seq
        nxt = await alice.send("after the gap", conversation_id=conv)
        got = await messages(bob, 4)
        assert [m.seq for m in got] == [sent[2].seq, sent[3].seq, sent[4].seq, nxt.seq]
        assert [m.body for m in got] == ["g2", "g3", "g4", "after the gap"]


async def test_resume_from_saved_cursors_after_being_offline(gateway_url: str, uid: str) -> None:
    async with WarblerClient(gateway_url) as alice:
        await alice.register(f"alice_{uid}", PASSWORD)
        await alice.connect()
        async with WarblerClient(gateway_url) as bob:
            await bob.register(f"bob_{uid}", PASSWORD)
            await bob.connect()
            first = await alice.send("before", to_user=bob.user_id)
            await next_of(bob, MessageFrame)
            saved = bob.cursors
        # Bob is offline: three messages.
        missed = [
            await alice.send(f"offline {i}", conversation_id=first.conversation_id)
            for i in range(3)
        ]
        async with WarblerClient(gateway_url, cursors=saved) as bob_again:
            await bob_again.login(f"bob_{uid}", PASSWORD)
            await bob_again.connect()
            got = await messages(bob_again, 3)
            assert [m.seq for m in got] == [m.seq for m in missed]
            synced = await next_of(bob_again, ConnectionEvent)
            while synced.state != "synced":
                synced = await next_of(bob_again, ConnectionEvent)
            live = await alice.send("live", conversation_id=first.conversation_id)
            assert (await next_of(bob_again, MessageFrame)).seq == live.seq


async def test_concurrent_sends_over_the_rate_limit_all_land_once(login: Login) -> None:
    """More sends at once than the rate limit's burst: the throttled ones wait as the server
    asks and go again; every send is stored once and the receiver sees all, in seq order."""
    async with login("alice") as alice, login("bob") as bob:
        conv = (await alice.open_direct(bob.user_id)).id
        limits = alice.limits
        assert limits is not None
        n = limits.send_burst + 40
        acks = await asyncio.gather(
            *(alice.send(f"c{i}", conversation_id=conv, timeout_s=120) for i in range(n))
        )
        seqs = sorted(a.seq for a in acks)
        assert seqs == list(range(seqs[0], seqs[0] + n))
        got = await messages(bob, n, timeout_s=120)
        assert [m.seq for m in got] == seqs
        assert sorted(str(m.body) for m in got) == sorted(f"c{i}" for i in range(n))
