"""SearchStore on the session's engine: the index follows every write path of messages.

Words carry the test's ``uid`` so that tests sharing a database never see each other's hits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import delete, update
from sqlmodel import col

from storage import (
    ConversationStore,
    Database,
    GroupCommitWriter,
    Message,
    MessageDraft,
    SeqCounter,
    User,
)
from storage.search import SEARCH_TERMS_MAX, SearchStore, search_terms
from warbler.errors import ErrorCode, WarblerError

MakeUser = Callable[[str], Awaitable[User]]


@pytest.fixture
def search(db: Database) -> SearchStore:
    return SearchStore(db)


async def _write(
    db: Database,
    conversation_id: int,
    sender_id: int,
    bodies: list[tuple[str, dict[str, object]]],
    tag: str,
    *,
    portable: bool = False,
) -> None:
    """Append through the group-commit writer, all in one batch (the real write path)."""
    writer = GroupCommitWriter(db, max_delay_ms=20, portable_sql=portable)
    await writer.start()
    counter = SeqCounter()
    try:
        futures = [
            writer.submit(
                MessageDraft(conversation_id, sender_id, f"{tag}-{i}", kind, body), counter
            )
            for i, (kind, body) in enumerate(bodies)
        ]
        for future in futures:
            await future
    finally:
        await writer.stop()


def test_search_terms_are_words_lowercased_and_distinct() -> None:
    assert search_terms("Hello, hello  WORLD! o'neil e-mail") == [
        "hello",
        "world",
        "o",
        "neil",
        "e",
        "mail",
    ]
    assert search_terms("  ...  ") == []
    assert search_terms("über Straße") == ["über", "straße"]
    assert len(search_terms(" ".join(f"w{i}" for i in range(40)))) == SEARCH_TERMS_MAX


@pytest.mark.parametrize("portable", [False, True], ids=["json-batch", "portable"])
async def test_finds_words_of_text_messages_newest_first(
    db: Database,
    conversations: ConversationStore,
    make_user: MakeUser,
    search: SearchStore,
    uid: str,
    portable: bool,
) -> None:
    alice = await make_user("alice")
    group = await conversations.create_group("g", alice.id, [])
    word = f"kiwi{uid}"
    await _write(
        db,
        group.id,
        alice.id,
        [
            ("text", {"text": f"I like {word} a lot"}),
            ("text", {"text": "nothing to see"}),
            ("json", {"text": f"{word} in a json body is not text"}),
            ("text", {"text": f"{word.upper()} again, and Tea"}),
            ("text", {"n": 3}),  # a text kind without a string: never indexed, never fails
        ],
        uid,
        portable=portable,
    )
    hits = await search.search_messages(alice.id, [word])
    assert [h.seq for h in hits] == [4, 1]
    assert hits[0].text == f"{word.upper()} again, and Tea"
    assert hits[0].conversation_id == group.id and hits[0].sender_id == alice.id
    # Every word is required; case does not matter; short words match too (MySQL's REGEXP).
    assert [h.seq for h in await search.search_messages(alice.id, [word, "tea"])] == [4]
    assert [h.seq for h in await search.search_messages(alice.id, [word, "a"])] == [1]
    assert await search.search_messages(alice.id, [word, "coffee"]) == []


async def test_pages_by_id_and_filters_by_conversation(
    db: Database,
    conversations: ConversationStore,
    make_user: MakeUser,
    search: SearchStore,
    uid: str,
) -> None:
    alice = await make_user("alice")
    one = await conversations.create_group("one", alice.id, [])
    two = await conversations.create_group("two", alice.id, [])
    word = f"plum{uid}"
    await _write(db, one.id, alice.id, [("text", {"text": f"{word} {n}"}) for n in range(5)], uid)
    await _write(db, two.id, alice.id, [("text", {"text": f"{word} two"})], f"{uid}b")
    first = await search.search_messages(alice.id, [word], limit=4)
    assert [(h.conversation_id, h.seq) for h in first] == [
        (two.id, 1),
        (one.id, 5),
        (one.id, 4),
        (one.id, 3),
    ]
    rest = await search.search_messages(alice.id, [word], limit=4, before_id=first[-1].id)
    assert [(h.conversation_id, h.seq) for h in rest] == [(one.id, 2), (one.id, 1)]
    only_two = await search.search_messages(alice.id, [word], conversation_id=two.id)
    assert [h.seq for h in only_two] == [1]


async def test_only_current_members_find_a_conversations_messages(
    db: Database,
    conversations: ConversationStore,
    make_user: MakeUser,
    search: SearchStore,
    uid: str,
) -> None:
    alice, bob, eve = await make_user("alice"), await make_user("bob"), await make_user("eve")
    group = await conversations.create_group("g", alice.id, [bob.id])
    direct = await conversations.get_or_create_direct(alice.id, bob.id)
    word = f"fig{uid}"
    await _write(db, group.id, alice.id, [("text", {"text": f"group {word}"})], uid)
    await _write(db, direct.id, bob.id, [("text", {"text": f"secret {word}"})], f"{uid}d")
    assert len(await search.search_messages(bob.id, [word])) == 2
    assert await search.search_messages(eve.id, [word]) == []
    assert await search.search_messages(eve.id, [word], conversation_id=direct.id) == []
    await conversations.remove_member(group.id, bob.id)
    hits = await search.search_messages(bob.id, [word])
    assert [h.conversation_id for h in hits] == [direct.id]


async def test_index_follows_updates_and_deletes(
    db: Database,
    conversations: ConversationStore,
    make_user: MakeUser,
    search: SearchStore,
    uid: str,
) -> None:
    alice = await make_user("alice")
    group = await conversations.create_group("g", alice.id, [])
    old, new = f"draft{uid}", f"final{uid}"
    await _write(db, group.id, alice.id, [("text", {"text": f"{old} answer"})], uid)
    assert len(await search.search_messages(alice.id, [old])) == 1
    # As BotStore.finish_answer does: a streamed answer's final body replaces the placeholder.
    async with db.session() as session:
        await session.exec(
            update(Message)
            .where(col(Message.conversation_id) == group.id)
            .values(body={"text": f"{new} answer"})
        )
        await session.commit()
    assert await search.search_messages(alice.id, [old]) == []
    assert len(await search.search_messages(alice.id, [new])) == 1
    async with db.session() as session:
        await session.exec(delete(Message).where(col(Message.conversation_id) == group.id))
        await session.commit()
    assert await search.search_messages(alice.id, [new]) == []


async def test_bad_arguments_are_validation_errors(search: SearchStore) -> None:
    with pytest.raises(WarblerError) as err:
        await search.search_messages(1, [])
    assert err.value.code is ErrorCode.VALIDATION
    with pytest.raises(WarblerError) as err:
        await search.search_messages(1, ["x"], limit=102)
    assert err.value.code is ErrorCode.VALIDATION
