"""ConversationStore: groups, direct pairs (also under races), members, read cursors, summaries."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from storage import (
    ConversationStore,
    Database,
    GroupCommitWriter,
    MessageDraft,
    SeqCounter,
    User,
)
from warbler.errors import ErrorCode, WarblerError

MakeUser = Callable[[str], Awaitable[User]]


async def test_create_group_makes_creator_owner(
    conversations: ConversationStore, make_user: MakeUser
) -> None:
    owner, a, b = await make_user("owner"), await make_user("a"), await make_user("b")
    group = await conversations.create_group("Team", owner.id, [a.id, b.id, a.id, owner.id])
    assert (group.kind, group.title, group.created_by, group.direct_key) == (
        "group",
        "Team",
        owner.id,
        None,
    )
    members = await conversations.list_members(group.id)
    assert {(m.user_id, m.role) for m in members} == {
        (owner.id, "owner"),
        (a.id, "member"),
        (b.id, "member"),
    }
    assert all(m.read_seq == 0 for m in members)
    fetched = await conversations.get_conversation(group.id)
    assert fetched is not None and fetched.title == "Team"
    assert await conversations.get_conversation(-1) is None


async def test_create_group_with_a_creation_key_is_created_once(
    conversations: ConversationStore, make_user: MakeUser, uid: str
) -> None:
    owner, a, b = await make_user("owner"), await make_user("a"), await make_user("b")
    key = f"{owner.id}:{uid}"
    first = await conversations.create_group("Team", owner.id, [a.id], creation_key=key)
    # A retry of the same command (even with other arguments) finds the first group.
    again = await conversations.create_group("Other", owner.id, [b.id], creation_key=key)
    assert again.id == first.id and again.title == "Team"
    members = await conversations.list_members(first.id)
    assert {m.user_id for m in members} == {owner.id, a.id}
    # Racing retries: one insert wins, the others read it.
    raced = await asyncio.gather(
        *(
            conversations.create_group("R", owner.id, [a.id], creation_key=f"{key}-race")
            for _ in range(4)
        )
    )
    assert len({c.id for c in raced}) == 1
    # Another command, or none, makes another group.
    other = await conversations.create_group("Team", owner.id, [a.id], creation_key=f"{key}-2")
    keyless = await conversations.create_group("Team", owner.id, [a.id])
    assert len({first.id, other.id, keyless.id}) == 3
    with pytest.raises(WarblerError) as err:
        await conversations.create_group("x", owner.id, [], creation_key="k" * 101)
    assert err.value.code is ErrorCode.VALIDATION


async def test_create_group_with_unknown_user_changes_nothing(
    conversations: ConversationStore, make_user: MakeUser
) -> None:
    owner = await make_user("owner")
    before = await conversations.list_user_conversation_ids(owner.id)
    with pytest.raises(WarblerError) as err:
        await conversations.create_group("x", owner.id, [-7])
    assert err.value.code is ErrorCode.NOT_FOUND
    assert await conversations.list_user_conversation_ids(owner.id) == before
    with pytest.raises(WarblerError) as err:
        await conversations.create_group("t" * 201, owner.id, [])
    assert err.value.code is ErrorCode.VALIDATION


async def test_direct_conversation_is_created_once(
    conversations: ConversationStore, make_user: MakeUser
) -> None:
    a, b = await make_user("a"), await make_user("b")
    first = await conversations.get_or_create_direct(a.id, b.id)
    again = await conversations.get_or_create_direct(b.id, a.id)
    assert first.id == again.id
    assert first.kind == "direct"
    assert first.direct_key == f"{min(a.id, b.id)}:{max(a.id, b.id)}"
    assert {m.user_id for m in await conversations.list_members(first.id)} == {a.id, b.id}


async def test_direct_conversation_race_creates_one(db: Database, make_user: MakeUser) -> None:
    a, b = await make_user("a"), await make_user("b")
    # Separate store objects, as separate gateways would have.
    results = await asyncio.gather(
        *(
            ConversationStore(db).get_or_create_direct(*((a.id, b.id) if i % 2 else (b.id, a.id)))
            for i in range(8)
        )
    )
    assert len({c.id for c in results}) == 1
    assert len(await ConversationStore(db).list_members(results[0].id)) == 2


async def test_direct_conversation_bad_input(
    conversations: ConversationStore, make_user: MakeUser
) -> None:
    a = await make_user("a")
    with pytest.raises(WarblerError) as err:
        await conversations.get_or_create_direct(a.id, a.id)
    assert err.value.code is ErrorCode.VALIDATION
    with pytest.raises(WarblerError) as err:
        await conversations.get_or_create_direct(a.id, -3)
    assert err.value.code is ErrorCode.NOT_FOUND
    assert await conversations.list_user_conversation_ids(a.id) == []


async def test_rename(conversations: ConversationStore, make_user: MakeUser) -> None:
    owner = await make_user("owner")
    group = await conversations.create_group("Old", owner.id, [])
    assert (await conversations.rename(group.id, "New")).title == "New"
    fetched = await conversations.get_conversation(group.id)
    assert fetched is not None and fetched.title == "New"
    with pytest.raises(WarblerError) as err:
        await conversations.rename(-1, "x")
    assert err.value.code is ErrorCode.NOT_FOUND


async def test_add_remove_members_and_roles(
    conversations: ConversationStore, make_user: MakeUser
) -> None:
    owner, a, b, c = [await make_user(n) for n in ("owner", "a", "b", "c")]
    group = await conversations.create_group("G", owner.id, [a.id])
    added = await conversations.add_members(group.id, [a.id, b.id, c.id, b.id])
    assert sorted(m.user_id for m in added) == sorted([b.id, c.id])
    assert await conversations.add_members(group.id, [b.id]) == []
    assert await conversations.add_members(group.id, [], role="admin") == []

    membership = await conversations.set_role(group.id, b.id, "admin")
    assert membership.role == "admin"
    stored = await conversations.get_membership(group.id, b.id)
    assert stored is not None and stored.role == "admin"

    assert await conversations.remove_member(group.id, c.id) is True
    assert await conversations.remove_member(group.id, c.id) is False
    assert await conversations.get_membership(group.id, c.id) is None
    assert {m.user_id for m in await conversations.list_members(group.id)} == {
        owner.id,
        a.id,
        b.id,
    }

    with pytest.raises(WarblerError) as err:
        await conversations.set_role(group.id, c.id, "admin")
    assert err.value.code is ErrorCode.NOT_MEMBER
    with pytest.raises(WarblerError) as err:
        await conversations.set_role(group.id, a.id, "emperor")
    assert err.value.code is ErrorCode.VALIDATION
    with pytest.raises(WarblerError) as err:
        await conversations.add_members(group.id, [-9])
    assert err.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(WarblerError) as err:
        await conversations.add_members(-1, [a.id])
    assert err.value.code is ErrorCode.NOT_FOUND


async def test_direct_conversations_gain_no_members(
    conversations: ConversationStore, make_user: MakeUser
) -> None:
    a, b, c = await make_user("a"), await make_user("b"), await make_user("c")
    direct = await conversations.get_or_create_direct(a.id, b.id)
    with pytest.raises(WarblerError) as err:
        await conversations.add_members(direct.id, [c.id])
    assert err.value.code is ErrorCode.BAD_REQUEST
    assert await conversations.get_membership(direct.id, c.id) is None


async def test_membership_pair_is_unique(
    db: Database, conversations: ConversationStore, make_user: MakeUser
) -> None:
    from sqlalchemy.exc import IntegrityError

    from storage import Membership

    owner = await make_user("owner")
    group = await conversations.create_group("G", owner.id, [])
    async with db.session() as session:
        session.add(Membership(conversation_id=group.id, user_id=owner.id, role="member"))
        with pytest.raises(IntegrityError):
            await session.commit()


async def test_read_seq_is_monotonic(conversations: ConversationStore, make_user: MakeUser) -> None:
    owner, a = await make_user("owner"), await make_user("a")
    group = await conversations.create_group("G", owner.id, [a.id])
    assert await conversations.set_read_seq(group.id, a.id, 5) == 5
    assert await conversations.set_read_seq(group.id, a.id, 3) == 5
    assert await conversations.set_read_seq(group.id, a.id, 9) == 9
    membership = await conversations.get_membership(group.id, a.id)
    assert membership is not None and membership.read_seq == 9
    with pytest.raises(WarblerError) as err:
        await conversations.set_read_seq(group.id, -1, 1)
    assert err.value.code is ErrorCode.NOT_MEMBER
    with pytest.raises(WarblerError) as err:
        await conversations.set_read_seq(group.id, a.id, -1)
    assert err.value.code is ErrorCode.VALIDATION


async def test_list_user_conversations(
    db: Database, conversations: ConversationStore, make_user: MakeUser, uid: str
) -> None:
    me, a, b = await make_user("me"), await make_user("a"), await make_user("b")
    quiet = await conversations.create_group("quiet", me.id, [a.id])
    busy = await conversations.create_group("busy", a.id, [me.id, b.id])
    direct = await conversations.get_or_create_direct(me.id, b.id)
    await conversations.create_group("not mine", a.id, [b.id])

    writer = GroupCommitWriter(db, max_delay_ms=1)
    await writer.start()
    try:
        busy_counter, direct_counter = SeqCounter(), SeqCounter()
        for i in range(5):
            await writer.append(
                MessageDraft(busy.id, a.id, f"{uid}-busy-{i}", "text", {"n": i}), busy_counter
            )
        await writer.append(
            MessageDraft(direct.id, b.id, f"{uid}-direct", "text", {"hi": "🐦"}), direct_counter
        )
    finally:
        await writer.stop()
    await conversations.set_read_seq(busy.id, me.id, 2)

    summaries = await conversations.list_user_conversations(me.id)
    by_id = {s.conversation.id: s for s in summaries}
    assert set(by_id) == {quiet.id, busy.id, direct.id}
    assert set(await conversations.list_user_conversation_ids(me.id)) == set(by_id)

    assert (by_id[busy.id].last_seq, by_id[busy.id].read_seq, by_id[busy.id].unread) == (5, 2, 3)
    last = by_id[busy.id].last_message
    assert last is not None and last.seq == 5 and last.body == {"n": 4}
    assert by_id[busy.id].role == "member"
    assert by_id[quiet.id].role == "owner"
    assert (by_id[quiet.id].last_seq, by_id[quiet.id].unread) == (0, 0)
    assert by_id[quiet.id].last_message is None
    direct_last = by_id[direct.id].last_message
    assert direct_last is not None and direct_last.body == {"hi": "🐦"}
    # Most recently active first; a conversation without messages sorts by creation time.
    assert [s.conversation.id for s in summaries] == [direct.id, busy.id, quiet.id]
