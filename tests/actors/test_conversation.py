"""The conversation entity's logic, driven directly (no Ray, no host) over real SQL and Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from actor_helpers import MakeUser, ask

from actors.context import EntityContext
from actors.conversation import (
    RECENT_MAX,
    ConversationEntity,
    ConversationState,
    create_conversation,
)
from actors.entity import Later
from actors.messages import (
    AddMembers,
    Append,
    ConversationInfo,
    CreateGroup,
    GetInfo,
    Leave,
    MarkRead,
    MessageEvent,
    OpenDirect,
    ReadLog,
    Receipt,
    RemoveMember,
    Rename,
    SetRole,
)
from actors.names import conv_key
from storage import EventBus, User
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import parse_server_frame


async def new_group(
    ctx: EntityContext, owner: User, members: list[User], title: str = "team"
) -> tuple[ConversationEntity, MessageEvent]:
    redirect = await create_conversation(
        ctx, CreateGroup(owner.id, title, tuple(m.id for m in members))
    )
    entity = await ConversationEntity.restore(redirect.key, ctx, None)
    event = await ask(entity, redirect.message)
    return entity, event


def text(sender: User, cid: str, words: str = "hi") -> Append:
    return Append(sender.id, cid, "text", {"text": words})


async def expect_error(code: ErrorCode, entity: ConversationEntity, message: object) -> None:
    with pytest.raises(WarblerError) as info:
        await ask(entity, message)
    assert info.value.code == code, info.value


async def test_create_group_logs_the_creation(ctx: EntityContext, make_user: MakeUser) -> None:
    owner, ann, bob = await make_user("owner"), await make_user("ann"), await make_user("bob")
    entity, event = await new_group(ctx, owner, [ann, bob], title="  Lunch ")
    assert (event.seq, event.kind, event.sender_id) == (1, "system", owner.id)
    assert event.body["op"] == "created" and event.body["title"] == "Lunch"
    info = await ask(entity, GetInfo(ann.id))
    assert isinstance(info, ConversationInfo)
    assert [(m.user_id, m.role) for m in info.members] == [
        (owner.id, "owner"),
        (ann.id, "member"),
        (bob.id, "member"),
    ]
    assert info.last_seq == 1 and info.kind == "group" and info.title == "Lunch"


async def test_appends_get_gapless_seqs_in_order_and_retries_are_idempotent(
    ctx: EntityContext, make_user: MakeUser
) -> None:
    owner, ann = await make_user("owner"), await make_user("ann")
    entity, _ = await new_group(ctx, owner, [ann])
    # Hand all drafts over before any commit: they share group-commit batches.
    pending = [await entity.handle(text(ann, f"m{i}", str(i))) for i in range(20)]
    assert all(isinstance(p, Later) for p in pending)
    events = [await p.task for p in pending if isinstance(p, Later)]
    assert [e.seq for e in events] == list(range(2, 22))
    assert not any(e.duplicate for e in events)

    again = await ask(entity, text(ann, "m3", "3"))
    assert again.duplicate and again.seq == events[3].seq and again.body == {"text": "3"}
    # The same id for another message is a client bug: a conflict, not a duplicate.
    await expect_error(ErrorCode.CONFLICT, entity, text(ann, "m3", "different body"))
    # Beyond the state's memory of recent ids, the writer's SQL look-up still dedupes...
    old = await ask(entity, text(ann, "m0", "0"))
    assert old.duplicate and old.seq == 2
    # ... and still tells a changed resend apart.
    await expect_error(ErrorCode.CONFLICT, entity, text(ann, "m1", "changed"))
    page = await ctx.messages.page_messages(entity.state.conversation_id, after_seq=0, limit=100)
    assert [m.seq for m in page] == list(range(1, 22))


async def test_bad_appends_are_refused_and_change_nothing(
    ctx: EntityContext, make_user: MakeUser
) -> None:
    owner, stranger = await make_user("owner"), await make_user("stranger")
    entity, _ = await new_group(ctx, owner, [])
    cid = entity.state.conversation_id
    await expect_error(ErrorCode.NOT_MEMBER, entity, text(stranger, "x"))
    await expect_error(ErrorCode.VALIDATION, entity, Append(owner.id, "x", "system", {}))
    await expect_error(ErrorCode.VALIDATION, entity, Append(owner.id, "", "text", {}))
    await expect_error(ErrorCode.VALIDATION, entity, Append(owner.id, "y" * 65, "text", {}))
    await expect_error(ErrorCode.VALIDATION, entity, Append(owner.id, "x", "text", "hi"))  # type: ignore[arg-type]
    big = {"text": "x" * (ctx.settings.max_body_bytes + 1)}
    await expect_error(ErrorCode.TOO_LARGE, entity, Append(owner.id, "x", "text", big))
    assert await ctx.messages.last_seq(cid) == 1
    assert entity.state.counter.last_seq == entity.state.committed_seq == 1


async def test_read_log_and_mark_read(ctx: EntityContext, make_user: MakeUser) -> None:
    owner, ann, stranger = await make_user("o"), await make_user("a"), await make_user("s")
    entity, _ = await new_group(ctx, owner, [ann])
    for i in range(5):
        await ask(entity, text(owner, f"r{i}"))
    page = await ask(entity, ReadLog(ann.id, after_seq=2, limit=2))
    assert [e.seq for e in page] == [3, 4]
    newest = await ask(entity, ReadLog(ann.id, limit=3))
    assert [e.seq for e in newest] == [4, 5, 6]
    await expect_error(ErrorCode.NOT_MEMBER, entity, ReadLog(stranger.id))
    await expect_error(ErrorCode.VALIDATION, entity, ReadLog(ann.id, limit=0))

    receipt = await ask(entity, MarkRead(ann.id, 4))
    assert receipt == Receipt(entity.state.conversation_id, ann.id, 4)
    assert (await ask(entity, MarkRead(ann.id, 2))).read_seq == 4  # never moves back
    assert (await ask(entity, MarkRead(ann.id, 999))).read_seq == 6  # clamped to the log
    await expect_error(ErrorCode.VALIDATION, entity, MarkRead(ann.id, -1))
    await expect_error(ErrorCode.NOT_MEMBER, entity, MarkRead(stranger.id, 1))


async def test_role_rules(ctx: EntityContext, make_user: MakeUser) -> None:
    owner, admin, ann, bob, cat = [await make_user(n) for n in ("o", "ad", "a", "b", "c")]
    entity, _ = await new_group(ctx, owner, [ann])
    cid = entity.state.conversation_id
    # Plain members manage nothing.
    await expect_error(ErrorCode.FORBIDDEN, entity, AddMembers(ann.id, (bob.id,)))
    await expect_error(ErrorCode.FORBIDDEN, entity, Rename(ann.id, "mine"))
    # The owner adds an admin; the admin adds members but no admins.
    await ask(entity, AddMembers(owner.id, (admin.id,), role="admin"))
    await expect_error(ErrorCode.FORBIDDEN, entity, AddMembers(admin.id, (bob.id,), role="admin"))
    added = await ask(entity, AddMembers(admin.id, (bob.id, cat.id)))
    assert added.body == {
        "op": "added",
        "by": admin.id,
        "user_ids": [bob.id, cat.id],
        "role": "member",
    }
    await expect_error(ErrorCode.CONFLICT, entity, AddMembers(admin.id, (bob.id,)))
    await expect_error(ErrorCode.NOT_FOUND, entity, AddMembers(owner.id, (10**15,)))
    # Admins rename and remove plain members, not other admins or the owner.
    await ask(entity, Rename(admin.id, "renamed"))
    await expect_error(ErrorCode.VALIDATION, entity, Rename(admin.id, "   "))
    await ask(entity, RemoveMember(admin.id, cat.id))
    await expect_error(ErrorCode.FORBIDDEN, entity, RemoveMember(admin.id, owner.id))
    await expect_error(ErrorCode.BAD_REQUEST, entity, RemoveMember(admin.id, admin.id))
    await expect_error(ErrorCode.NOT_FOUND, entity, RemoveMember(admin.id, cat.id))
    # Only the owner changes roles.
    await expect_error(ErrorCode.FORBIDDEN, entity, SetRole(admin.id, bob.id, "admin"))
    await ask(entity, SetRole(owner.id, bob.id, "admin"))
    await ask(entity, RemoveMember(owner.id, bob.id))  # the owner removes an admin

    expected = {owner.id: "owner", admin.id: "admin", ann.id: "member"}
    assert entity.state.members == expected
    rows = {m.user_id: m.role for m in await ctx.conversations.list_members(cid)}
    assert rows == expected
    conversation = await ctx.conversations.get_conversation(cid)
    assert conversation is not None and conversation.title == "renamed"
    log = await ctx.messages.page_messages(cid, after_seq=0, limit=100)
    assert [m.body["op"] for m in log] == [
        "created",
        "added",
        "added",
        "renamed",
        "removed",
        "role",
        "removed",
    ]


async def test_ownership_transfer_and_owner_leaving(
    ctx: EntityContext, make_user: MakeUser
) -> None:
    owner, ann, bob, cat = [await make_user(n) for n in ("o", "a", "b", "c")]
    entity, _ = await new_group(ctx, owner, [ann, bob, cat])
    await ask(entity, SetRole(owner.id, cat.id, "admin"))
    # The owner leaves: the oldest admin (cat), not the oldest member (ann), takes over.
    left = await ask(entity, Leave(owner.id))
    assert left.body["new_owner"] == cat.id
    assert entity.state.members == {ann.id: "member", bob.id: "member", cat.id: "owner"}
    # Transfer: bob becomes owner, cat becomes an admin.
    await ask(entity, SetRole(cat.id, bob.id, "owner"))
    assert entity.state.members == {ann.id: "member", bob.id: "owner", cat.id: "admin"}
    await ask(entity, Leave(cat.id))
    # No admin left: the oldest member inherits.
    await ask(entity, Leave(bob.id))
    assert entity.state.members == {ann.id: "owner"}
    rows = await ctx.conversations.list_members(entity.state.conversation_id)
    assert [(m.user_id, m.role) for m in rows] == [(ann.id, "owner")]
    await expect_error(ErrorCode.NOT_MEMBER, entity, Leave(bob.id))


async def test_direct_conversation(ctx: EntityContext, make_user: MakeUser) -> None:
    ann, bob, cat = await make_user("a"), await make_user("b"), await make_user("c")
    redirect = await create_conversation(ctx, OpenDirect(ann.id, bob.id))
    again = await create_conversation(ctx, OpenDirect(bob.id, ann.id))
    assert redirect.key == again.key
    entity = await ConversationEntity.restore(redirect.key, ctx, None)
    info = await ask(entity, redirect.message)
    assert info.kind == "direct" and info.title is None
    assert {m.user_id for m in info.members} == {ann.id, bob.id}
    assert (await ask(entity, text(bob, "d1"))).seq == 1
    await expect_error(ErrorCode.UNSUPPORTED, entity, AddMembers(ann.id, (cat.id,)))
    await expect_error(ErrorCode.UNSUPPORTED, entity, Leave(ann.id))
    await expect_error(ErrorCode.UNSUPPORTED, entity, Rename(ann.id, "x"))
    with pytest.raises(WarblerError) as err:
        await create_conversation(ctx, OpenDirect(ann.id, ann.id))
    assert err.value.code == ErrorCode.VALIDATION


async def test_membership_commands_are_idempotent_by_op_id(
    ctx: EntityContext, make_user: MakeUser
) -> None:
    owner, ann, bob = await make_user("o"), await make_user("a"), await make_user("b")
    entity, created = await new_group(ctx, owner, [ann, bob])
    remove = RemoveMember(owner.id, bob.id)
    first = await ask(entity, remove)
    assert (await ask(entity, remove)) == MessageEvent(**{**_fields(first), "duplicate": True})
    # Push the op out of the state's recent ids: the retry is found in SQL instead.
    for i in range(RECENT_MAX + 2):
        await ask(entity, text(ann, f"fill{i}"))
    late = await ask(entity, remove)
    assert late.duplicate and late.seq == first.seq
    # A retried creation redirects to the same conversation and answers the logged event.
    create = CreateGroup(owner.id, "x", (ann.id,), op_id=created.client_msg_id)
    redirect = await create_conversation(ctx, create)
    assert redirect.key == entity.key
    assert (await ask(entity, create)).duplicate


async def test_a_creation_retried_after_a_crash_before_its_log_makes_no_orphan(
    ctx: EntityContext, make_user: MakeUser
) -> None:
    owner, ann = await make_user("o"), await make_user("a")
    create = CreateGroup(owner.id, "crashy", (ann.id,))
    # The factory inserted the group, then the host died before the entity logged it.
    first = await create_conversation(ctx, create)
    # The caller retries the same command: same group, and now its creation is logged.
    retry = await create_conversation(ctx, create)
    assert retry.key == first.key
    entity = await ConversationEntity.restore(retry.key, ctx, None)
    event = await ask(entity, retry.message)
    assert event.seq == 1 and event.body["op"] == "created" and not event.duplicate
    # ann (new for this test) is in that one group only: no orphan twin.
    assert await ctx.conversations.list_user_conversation_ids(ann.id) == [
        int(first.key.split(":")[1])
    ]


def _fields(event: MessageEvent) -> dict[str, Any]:
    return {f: getattr(event, f) for f in MessageEvent.__dataclass_fields__}


async def test_restore_from_checkpoint_and_log(ctx: EntityContext, make_user: MakeUser) -> None:
    owner, ann, bob = await make_user("o"), await make_user("a"), await make_user("b")
    entity, _ = await new_group(ctx, owner, [ann])
    await ask(entity, text(ann, "before"))
    checkpoint = entity.snapshot()
    assert checkpoint[0] == 2
    # After the checkpoint: messages and membership changes, only in the log.
    await ask(entity, AddMembers(owner.id, (bob.id,)))
    await ask(entity, Rename(owner.id, "later"))
    await ask(entity, text(bob, "after"))

    restored = await ConversationEntity.restore(entity.key, ctx, checkpoint)
    assert restored.state.members == entity.state.members
    assert restored.state.title == "later"
    assert restored.state.committed_seq == restored.state.counter.last_seq == 5
    assert (await ask(restored, text(bob, "next"))).seq == 6
    # With no checkpoint at all, the full log replays over the rows to the same state.
    scratch = await ConversationEntity.restore(entity.key, ctx, None)
    assert scratch.state.members == restored.state.members
    assert scratch.state.committed_seq == 6


async def test_activation_repairs_rows_that_drifted_from_the_log(
    ctx: EntityContext, make_user: MakeUser
) -> None:
    owner, ann, bob = await make_user("o"), await make_user("a"), await make_user("b")
    entity, _ = await new_group(ctx, owner, [ann])
    cid = entity.state.conversation_id
    before = entity.snapshot()
    await ask(entity, RemoveMember(owner.id, ann.id))
    await ask(entity, AddMembers(owner.id, (bob.id,)))
    assert entity.state.rows_seq == entity.state.system_seq == 3
    # As if the host died after logging both events and before writing their rows: the rows
    # still say what they said before, and the checkpoint says the rows lag the log.
    await ctx.conversations.add_members(cid, [ann.id])
    await ctx.conversations.remove_member(cid, bob.id)
    crashed = ConversationState.load(entity.snapshot()[1])
    crashed.rows_seq = ConversationState.load(before[1]).rows_seq
    restored = await ConversationEntity.restore(entity.key, ctx, (3, crashed.dump()))
    rows = {m.user_id: m.role for m in await ctx.conversations.list_members(cid)}
    assert rows == {owner.id: "owner", bob.id: "member"} == restored.state.members
    assert restored.state.rows_seq == 3
    # With no checkpoint at all, replaying the whole log repairs them too.
    await ctx.conversations.add_members(cid, [ann.id])
    await ConversationEntity.restore(entity.key, ctx, None)
    rows = {m.user_id: m.role for m in await ctx.conversations.list_members(cid)}
    assert rows == {owner.id: "owner", bob.id: "member"}


async def test_unknown_conversation_is_not_found(ctx: EntityContext) -> None:
    with pytest.raises(WarblerError) as err:
        await ConversationEntity.restore(conv_key(10**15), ctx, None)
    assert err.value.code == ErrorCode.NOT_FOUND


async def test_events_are_published_as_server_frames(
    ctx: EntityContext, make_user: MakeUser, redis: aioredis.Redis
) -> None:
    owner, ann, bob = await make_user("o"), await make_user("a"), await make_user("b")
    entity, _ = await new_group(ctx, owner, [ann])
    cid = entity.state.conversation_id
    await ctx.publisher.drain()  # the creation event went out before we listened
    async with EventBus(redis, ctx.keys).subscriber() as sub:
        await sub.subscribe(ctx.keys.conv_channel(cid), ctx.keys.user_channel(bob.id))
        await asyncio.sleep(0.05)
        sent = await ask(entity, text(ann, "pub"))
        await ask(entity, AddMembers(owner.id, (bob.id,)))
        await ask(entity, MarkRead(ann.id, 2))
        frames = []
        async with asyncio.timeout(5):
            async for channel, payload in sub:
                frames.append((channel, parse_server_frame(payload)))
                if len(frames) == 4:
                    break
    by_type = [(c.rsplit(":", 2)[-2], f.type) for c, f in frames]
    assert by_type == [
        ("conv", "message"),
        ("conv", "message"),
        ("user", "conversation"),
        ("conv", "receipt"),
    ]
    message = frames[0][1]
    # The body in its wire form (a text message's string), so gateways forward the bytes.
    assert message.type == "message" and message.seq == sent.seq
    assert sent.body == {"text": "hi"} and message.body == "hi"
    assert frames[2][1].type == "conversation" and frames[2][1].event == "added"


async def test_group_caps_refuse_a_group_too_large_and_one_too_many(
    ctx: EntityContext, make_user: MakeUser, redis: aioredis.Redis
) -> None:
    """Per-user caps (issue 11): members per group, at creation and on add; groups per owner.
    A refused command changes nothing."""
    capped = ctx.settings.model_copy(update={"max_group_members": 3, "max_groups_per_user": 2})
    limited = EntityContext.build(capped, ctx.db, redis)
    await limited.start()
    try:
        owner, ann, bob, cy = [await make_user(n) for n in ("owner", "ann", "bob", "cy")]
        with pytest.raises(WarblerError) as info:
            await create_conversation(
                limited, CreateGroup(owner.id, "big", (ann.id, bob.id, cy.id))
            )
        assert info.value.code == ErrorCode.LIMIT_REACHED and info.value.status == 403
        assert await limited.conversations.count_owned_groups(owner.id) == 0

        entity, _ = await new_group(limited, owner, [ann, bob])
        await expect_error(ErrorCode.LIMIT_REACHED, entity, AddMembers(owner.id, (cy.id,)))
        info_after = await ask(entity, GetInfo(owner.id))
        assert isinstance(info_after, ConversationInfo) and len(info_after.members) == 3

        await new_group(limited, owner, [])
        with pytest.raises(WarblerError) as info:
            await create_conversation(limited, CreateGroup(owner.id, "third", ()))
        assert info.value.code == ErrorCode.LIMIT_REACHED
        assert await limited.conversations.count_owned_groups(owner.id) == 2
    finally:
        await limited.stop()
