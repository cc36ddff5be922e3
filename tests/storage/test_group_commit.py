"""GroupCommitWriter: ordering, exactly-once seqs, duplicates, failure and shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from storage import (
    ConversationStore,
    Database,
    GroupCommitWriter,
    MessageDraft,
    MessageStore,
    SeqCounter,
    User,
)
from warbler.errors import ErrorCode, WarblerError

MakeUser = Callable[[str], Awaitable[User]]
# Big enough that a batch is only flushed early because it is full: tests control batching.
HOLD_MS = 60_000.0


MakeWriter = Callable[..., GroupCommitWriter]


@pytest.fixture
async def sender(make_user: MakeUser) -> User:
    return await make_user("sender")


@pytest.fixture(params=[False, True], ids=["json-batch", "portable-sql"])
def make_writer(request: pytest.FixtureRequest, db: Database) -> MakeWriter:
    """Writers using the engine's JSON batch statements, or the SQL every engine runs."""

    def make(**kwargs: Any) -> GroupCommitWriter:
        return GroupCommitWriter(db, portable_sql=request.param, **kwargs)

    return make


async def _groups(conversations: ConversationStore, owner: User, n: int) -> list[int]:
    return [(await conversations.create_group(f"g{i}", owner.id, [])).id for i in range(n)]


async def _started(writer: GroupCommitWriter) -> GroupCommitWriter:
    await writer.start()
    return writer


async def test_concurrent_appends_get_gapless_seqs_in_arrival_order(
    make_writer: MakeWriter,
    db: Database,
    conversations: ConversationStore,
    messages: MessageStore,
    sender: User,
    uid: str,
) -> None:
    convs = await _groups(conversations, sender, 4)
    counters = {c: SeqCounter() for c in convs}
    writer = await _started(make_writer(max_batch=64, max_delay_ms=2))
    n = 400
    drafts = [
        MessageDraft(convs[i % 4], sender.id, f"{uid}-{i}", "text", {"i": i}) for i in range(n)
    ]
    try:
        results = await asyncio.gather(
            *(writer.append(d, counters[d.conversation_id]) for d in drafts)
        )
    finally:
        await writer.stop()
    assert writer.batches > 1  # really batched, more than one transaction
    for conv in convs:
        mine = [r for r in results if r.conversation_id == conv]
        # Arrival order is call order: seqs 1..n in that order, no gaps, no duplicates.
        assert [r.seq for r in mine] == list(range(1, n // 4 + 1))
        assert [r.body["i"] for r in mine] == sorted(r.body["i"] for r in mine)
        assert counters[conv].last_seq == n // 4
        stored = await messages.page_messages(conv, after_seq=0, limit=1000)
        assert [(m.seq, m.id, m.client_msg_id) for m in stored] == [
            (r.seq, r.id, r.client_msg_id) for r in mine
        ]
    assert not any(r.duplicate for r in results)
    assert len({r.id for r in results}) == n


async def test_duplicate_append_returns_the_stored_message(
    make_writer: MakeWriter,
    db: Database,
    conversations: ConversationStore,
    messages: MessageStore,
    sender: User,
    uid: str,
) -> None:
    (conv,) = await _groups(conversations, sender, 1)
    counter = SeqCounter()
    writer = await _started(make_writer(max_delay_ms=1))
    try:
        first = await writer.append(
            MessageDraft(conv, sender.id, f"{uid}-a", "text", {"v": 1}), counter
        )
        again = await writer.append(
            MessageDraft(conv, sender.id, f"{uid}-a", "text", {"v": "changed"}), counter
        )
        after = await writer.append(MessageDraft(conv, sender.id, f"{uid}-b", "text", {}), counter)
    finally:
        await writer.stop()
    assert not first.duplicate and again.duplicate
    assert (again.id, again.seq, again.body, again.created_at) == (
        first.id,
        first.seq,
        {"v": 1},
        first.created_at,
    )
    assert after.seq == first.seq + 1  # the duplicate consumed no seq
    assert counter.last_seq == 2
    assert await messages.last_seq(conv) == 2


async def test_duplicates_within_one_batch(
    make_writer: MakeWriter,
    db: Database,
    conversations: ConversationStore,
    messages: MessageStore,
    sender: User,
    uid: str,
) -> None:
    (conv,) = await _groups(conversations, sender, 1)
    counter = SeqCounter()
    writer = await _started(make_writer(max_batch=4, max_delay_ms=HOLD_MS))
    drafts = [
        MessageDraft(conv, sender.id, f"{uid}-x", "text", {"copy": 1}),
        MessageDraft(conv, sender.id, f"{uid}-y", "text", {}),
        MessageDraft(conv, sender.id, f"{uid}-x", "text", {"copy": 2}),
        MessageDraft(conv, sender.id, f"{uid}-x", "text", {"copy": 3}),
    ]
    try:
        results = await asyncio.gather(*(writer.append(d, counter) for d in drafts))
    finally:
        await writer.stop()
    assert writer.batches == 1
    assert [(r.seq, r.duplicate) for r in results] == [(1, False), (2, False), (1, True), (1, True)]
    assert results[2].id == results[3].id == results[0].id
    assert results[3].body == {"copy": 1}
    assert counter.last_seq == 2
    stored = await messages.page_messages(conv, after_seq=0)
    assert [(m.seq, m.client_msg_id) for m in stored] == [(1, f"{uid}-x"), (2, f"{uid}-y")]


async def test_failed_batch_restores_counters_and_fails_every_caller(
    make_writer: MakeWriter,
    db: Database,
    conversations: ConversationStore,
    messages: MessageStore,
    sender: User,
    uid: str,
) -> None:
    bad_conv, good_conv = await _groups(conversations, sender, 2)
    quick = await _started(make_writer(max_delay_ms=1))
    held = await _started(make_writer(max_batch=3, max_delay_ms=HOLD_MS))
    try:
        await quick.append(MessageDraft(bad_conv, sender.id, f"{uid}-0", "text", {}), SeqCounter())
        # A stale counter (0, while seq 1 is stored) makes the INSERT violate (conversation, seq).
        stale, good = SeqCounter(0), SeqCounter(7)
        outcomes = await asyncio.gather(
            held.append(MessageDraft(bad_conv, sender.id, f"{uid}-1", "text", {}), stale),
            held.append(MessageDraft(good_conv, sender.id, f"{uid}-2", "text", {}), good),
            held.append(MessageDraft(good_conv, sender.id, f"{uid}-3", "text", {}), good),
            return_exceptions=True,
        )
        assert all(isinstance(o, IntegrityError) for o in outcomes), outcomes
        assert (stale.last_seq, good.last_seq) == (0, 7)
        assert await messages.last_seq(good_conv) == 0  # all or nothing
        assert await messages.get_by_client_id(sender.id, f"{uid}-2") is None

        # The writer keeps working after a failed batch.
        ok = await asyncio.gather(
            held.append(MessageDraft(good_conv, sender.id, f"{uid}-2", "text", {}), good),
            held.append(MessageDraft(good_conv, sender.id, f"{uid}-3", "text", {}), good),
            held.append(MessageDraft(bad_conv, sender.id, f"{uid}-1", "text", {}), SeqCounter(1)),
        )
        assert [(r.seq, r.duplicate) for r in ok] == [(8, False), (9, False), (2, False)]
        assert good.last_seq == 9
    finally:
        await quick.stop()
        await held.stop()


async def test_unknown_sender_fails_the_batch_and_stores_nothing(
    make_writer: MakeWriter,
    db: Database,
    conversations: ConversationStore,
    messages: MessageStore,
    sender: User,
    uid: str,
) -> None:
    (conv,) = await _groups(conversations, sender, 1)
    counter = SeqCounter()
    writer = await _started(make_writer(max_delay_ms=1))
    try:
        with pytest.raises(IntegrityError):
            await writer.append(MessageDraft(conv, -1, f"{uid}-ghost", "text", {}), counter)
    finally:
        await writer.stop()
    assert counter.last_seq == 0
    assert await messages.last_seq(conv) == 0


async def test_full_batch_flushes_before_the_delay(
    make_writer: MakeWriter, db: Database, conversations: ConversationStore, sender: User, uid: str
) -> None:
    (conv,) = await _groups(conversations, sender, 1)
    counter = SeqCounter()
    writer = await _started(make_writer(max_batch=5, max_delay_ms=HOLD_MS))
    try:
        results = await asyncio.wait_for(
            asyncio.gather(
                *(
                    writer.append(MessageDraft(conv, sender.id, f"{uid}-{i}", "t", {}), counter)
                    for i in range(10)
                )
            ),
            timeout=30,  # a liveness bound, not a performance claim: without flush-on-full, hangs
        )
    finally:
        await writer.stop()
    assert [r.seq for r in results] == list(range(1, 11))
    assert writer.batches == 2


async def test_stop_flushes_what_is_queued(
    make_writer: MakeWriter,
    db: Database,
    conversations: ConversationStore,
    messages: MessageStore,
    sender: User,
    uid: str,
) -> None:
    (conv,) = await _groups(conversations, sender, 1)
    counter = SeqCounter()
    writer = await _started(make_writer(max_batch=100, max_delay_ms=HOLD_MS))
    tasks = [
        asyncio.create_task(
            writer.append(MessageDraft(conv, sender.id, f"{uid}-{i}", "t", {}), counter)
        )
        for i in range(7)
    ]
    await asyncio.sleep(0)  # let every append enqueue
    await writer.stop()
    assert [t.result().seq for t in tasks] == list(range(1, 8))
    assert await messages.last_seq(conv) == 7
    with pytest.raises(WarblerError) as err:
        await writer.append(MessageDraft(conv, sender.id, f"{uid}-late", "t", {}), counter)
    assert err.value.code is ErrorCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("client_msg_id", "kind", "body"),
    [("", "text", {}), ("x" * 65, "text", {}), ("ok", "", {}), ("ok", "k" * 17, {})],
)
async def test_bad_drafts_are_rejected_before_queueing(
    make_writer: MakeWriter,
    db: Database,
    conversations: ConversationStore,
    messages: MessageStore,
    sender: User,
    client_msg_id: str,
    kind: str,
    body: dict[str, object],
) -> None:
    (conv,) = await _groups(conversations, sender, 1)
    counter = SeqCounter()
    writer = await _started(make_writer(max_delay_ms=1))
    try:
        with pytest.raises(WarblerError) as err:
            await writer.append(MessageDraft(conv, sender.id, client_msg_id, kind, body), counter)
    finally:
        await writer.stop()
    assert err.value.code is ErrorCode.VALIDATION
    assert counter.last_seq == 0 and writer.batches == 0
    assert await messages.last_seq(conv) == 0


async def test_bodies_round_trip(
    make_writer: MakeWriter,
    db: Database,
    conversations: ConversationStore,
    messages: MessageStore,
    sender: User,
    uid: str,
) -> None:
    (conv,) = await _groups(conversations, sender, 1)
    body = {"text": "héllo 🐦 世界", "n": [1, 2.5, None, True], "nested": {"k": "v"}}
    writer = await _started(make_writer(max_delay_ms=1))
    try:
        stored = await writer.append(
            MessageDraft(conv, sender.id, f"{uid}-b", "text", body), SeqCounter()
        )
    finally:
        await writer.stop()
    assert stored.body == body
    (read,) = await messages.page_messages(conv, after_seq=0)
    assert read.body == body
    assert read.created_at == stored.created_at


def test_append_values_pickle() -> None:
    # Drafts, counters and results cross Ray calls.
    import pickle
    from datetime import UTC, datetime

    from storage import StoredMessage

    values: list[object] = [
        MessageDraft(1, 2, "c", "text", {"a": [1]}),
        SeqCounter(5),
        StoredMessage(1, 2, 3, 4, "c", "text", {"a": 1}, datetime.now(UTC), duplicate=True),
    ]
    for value in values:
        assert pickle.loads(pickle.dumps(value)) == value


async def test_client_msg_ids_compare_exactly(
    make_writer: MakeWriter, db: Database, conversations: ConversationStore, sender: User, uid: str
) -> None:
    (conv,) = await _groups(conversations, sender, 1)
    counter = SeqCounter()
    writer = await _started(make_writer(max_delay_ms=1))
    try:
        lower = await writer.append(MessageDraft(conv, sender.id, f"k-{uid}", "t", {}), counter)
        upper = await writer.append(
            MessageDraft(conv, sender.id, f"K-{uid}".upper(), "t", {}), counter
        )
        emoji = await writer.append(MessageDraft(conv, sender.id, f"🐦-{uid}", "t", {}), counter)
        again = await writer.append(MessageDraft(conv, sender.id, f"🐦-{uid}", "t", {}), counter)
    finally:
        await writer.stop()
    assert [(m.seq, m.duplicate) for m in (lower, upper, emoji, again)] == [
        (1, False),
        (2, False),
        (3, False),
        (3, True),
    ]


async def test_submit_queues_synchronously_in_call_order(
    make_writer: MakeWriter,
    db: Database,
    conversations: ConversationStore,
    messages: MessageStore,
    sender: User,
    uid: str,
) -> None:
    (conv,) = await _groups(conversations, sender, 1)
    counter = SeqCounter()
    stopped = make_writer(max_delay_ms=1)
    with pytest.raises(WarblerError) as err:
        stopped.submit(MessageDraft(conv, sender.id, f"{uid}-x", "text", {}), counter)
    assert err.value.code is ErrorCode.UNAVAILABLE
    writer = await _started(make_writer(max_batch=8, max_delay_ms=HOLD_MS))
    try:
        with pytest.raises(WarblerError) as err:  # raised at the call, nothing queued
            writer.submit(MessageDraft(conv, sender.id, "", "text", {}), counter)
        assert err.value.code is ErrorCode.VALIDATION
        # No await between the calls: each draft is queued by the call itself.
        futures = [
            writer.submit(MessageDraft(conv, sender.id, f"{uid}-{i}", "text", {"i": i}), counter)
            for i in range(8)  # a full batch: flushed without waiting for the delay
        ]
        assert not any(f.done() for f in futures)
        results = await asyncio.gather(*futures)
    finally:
        await writer.stop()
    assert [r.seq for r in results] == list(range(1, 9))
    assert [r.body["i"] for r in results] == list(range(8))
    stored = await messages.page_messages(conv, after_seq=0, limit=100)
    assert [(m.seq, m.client_msg_id) for m in stored] == [(r.seq, r.client_msg_id) for r in results]


async def test_a_lost_database_connection_fails_the_batch_as_unavailable(
    db: Database, conversations: ConversationStore, messages: MessageStore, sender: User, uid: str
) -> None:
    """PostgreSQL terminates the writer's connection (a failover, an admin's kill): the batch
    fails with UNAVAILABLE, which clients retry under the same id, not internal_error (the chaos
    bench's SQL cut answered 25 sends with internal_error); the writer reconnects by itself."""
    if db.dialect != "postgresql":
        pytest.skip("terminating a backend is PostgreSQL's pg_terminate_backend")
    from sqlalchemy import text

    (conv,) = await _groups(conversations, sender, 1)
    counter = SeqCounter()
    writer = await _started(GroupCommitWriter(db, max_delay_ms=1))
    try:
        await writer.append(MessageDraft(conv, sender.id, f"{uid}-a", "text", {}), counter)
        # The writer's own connection, by its pid: picking "the newest backend that ran the
        # batch statement" killed another engine's connection in CI (hosts of the session's Ray
        # cluster write to the same database), and the writer then did not fail.
        conn = writer._conn  # private on purpose: this test is about that connection
        assert conn is not None
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        async with db.autocommit_engine.connect() as admin:
            killed = await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            assert killed.scalar_one(), "the writer's backend was not terminated"
            # pg_terminate_backend only signals: wait until the backend has gone.
            for _ in range(100):
                alive = await admin.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
                )
                if not alive.scalar_one():
                    break
                await asyncio.sleep(0.05)
        with pytest.raises(WarblerError) as info:
            await writer.append(MessageDraft(conv, sender.id, f"{uid}-b", "text", {}), counter)
        assert info.value.code == ErrorCode.UNAVAILABLE
        stored = await writer.append(MessageDraft(conv, sender.id, f"{uid}-b", "text", {}), counter)
        assert (stored.seq, stored.duplicate) == (2, False)
    finally:
        await writer.stop()
    assert [m.client_msg_id for m in await messages.page_messages(conv, after_seq=0)] == [
        f"{uid}-a",
        f"{uid}-b",
    ]
