"""MessageStore reads, and the unique constraints of the messages table."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from storage import (
    ConversationStore,
    Database,
    GroupCommitWriter,
    Message,
    MessageDraft,
    MessageStore,
    SeqCounter,
    User,
)
from storage.types import utcnow
from warbler.errors import ErrorCode, WarblerError

MakeUser = Callable[[str], Awaitable[User]]


@pytest.fixture
async def filled(
    db: Database, conversations: ConversationStore, make_user: MakeUser, uid: str
) -> tuple[int, User]:
    """A group with 25 messages, seqs 1..25, bodies {"n": seq}."""
    sender = await make_user("sender")
    group = await conversations.create_group("log", sender.id, [])
    writer = GroupCommitWriter(db, max_delay_ms=1)
    await writer.start()
    counter = SeqCounter()
    try:
        for n in range(1, 26):
            await writer.append(
                MessageDraft(group.id, sender.id, f"{uid}-{n}", "text", {"n": n}), counter
            )
    finally:
        await writer.stop()
    return group.id, sender


async def test_page_after_seq_is_ascending(
    messages: MessageStore, filled: tuple[int, User]
) -> None:
    conv, _ = filled
    page = await messages.page_messages(conv, after_seq=0, limit=10)
    assert [m.seq for m in page] == list(range(1, 11))
    page = await messages.page_messages(conv, after_seq=20, limit=10)
    assert [m.seq for m in page] == [21, 22, 23, 24, 25]
    assert [m.body for m in page] == [{"n": n} for n in range(21, 26)]
    assert await messages.page_messages(conv, after_seq=25) == []


async def test_page_before_seq_returns_the_newest_older_ones(
    messages: MessageStore, filled: tuple[int, User]
) -> None:
    conv, _ = filled
    assert [m.seq for m in await messages.page_messages(conv, limit=3)] == [23, 24, 25]
    page = await messages.page_messages(conv, before_seq=10, limit=4)
    assert [m.seq for m in page] == [6, 7, 8, 9]
    page = await messages.page_messages(conv, after_seq=3, before_seq=7)
    assert [m.seq for m in page] == [4, 5, 6]


async def test_page_limit_is_validated(messages: MessageStore) -> None:
    for limit in (0, -1, 100_000):
        with pytest.raises(WarblerError) as err:
            await messages.page_messages(1, limit=limit)
        assert err.value.code is ErrorCode.VALIDATION


async def test_last_seq(messages: MessageStore, filled: tuple[int, User]) -> None:
    conv, _ = filled
    assert await messages.last_seq(conv) == 25
    assert await messages.last_seq(-1) == 0


async def test_get_by_client_id(messages: MessageStore, filled: tuple[int, User], uid: str) -> None:
    conv, sender = filled
    found = await messages.get_by_client_id(sender.id, f"{uid}-7")
    assert found is not None
    assert (found.conversation_id, found.seq, found.kind, found.body) == (conv, 7, "text", {"n": 7})
    assert await messages.get_by_client_id(sender.id, "nope") is None


async def _raw_insert(db: Database, **row: object) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(insert(Message.__table__), [row])  # type: ignore[attr-defined]


async def test_unique_conversation_seq(db: Database, filled: tuple[int, User], uid: str) -> None:
    conv, sender = filled
    with pytest.raises(IntegrityError):
        await _raw_insert(
            db,
            conversation_id=conv,
            seq=3,
            sender_id=sender.id,
            client_msg_id=f"{uid}-fresh",
            kind="text",
            body={},
            created_at=utcnow(),
        )


async def test_unique_sender_client_msg_id(
    db: Database, filled: tuple[int, User], uid: str
) -> None:
    conv, sender = filled
    with pytest.raises(IntegrityError):
        await _raw_insert(
            db,
            conversation_id=conv,
            seq=99,
            sender_id=sender.id,
            client_msg_id=f"{uid}-3",
            kind="text",
            body={},
            created_at=utcnow(),
        )
