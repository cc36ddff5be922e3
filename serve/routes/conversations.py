"""/v1/conversations and /v1/messages: conversations, members, history, sending, read marks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from serve.deps import Caller, Ctx
from serve.problems import problems
from serve.routes.params import ConversationId, SeqQuery, UserId
from warbler.protocol import (
    AckPublic,
    ConversationPublic,
    ConversationSummaryPublic,
    ConversationUpdate,
    DirectCreate,
    GroupCreate,
    MembersCreate,
    MessageCreate,
    MessagePagePublic,
    ReadCreate,
    ReceiptPublic,
    RoleUpdate,
)

router = APIRouter(tags=["conversations"], responses=problems(401, 403, 404, 409, 429, 503))


@router.get("/conversations")
async def list_conversations(ctx: Ctx, caller: Caller) -> list[ConversationSummaryPublic]:
    """The caller's conversations with their last message and unread count."""
    return await ctx.chat.list_conversations(caller.user_id)


@router.post("/conversations", status_code=status.HTTP_201_CREATED)
async def create_group(body: GroupCreate, ctx: Ctx, caller: Caller) -> ConversationPublic:
    """Create a group; the caller owns it."""
    return await ctx.chat.create_group(caller.user_id, body)


@router.post("/conversations/direct")
async def open_direct(body: DirectCreate, ctx: Ctx, caller: Caller) -> ConversationPublic:
    """The direct conversation with a user (opened on first use)."""
    return await ctx.chat.open_direct(caller.user_id, body.user_id)


@router.get("/conversations/{conversation_id}")
async def get_conversation(
    conversation_id: ConversationId, ctx: Ctx, caller: Caller
) -> ConversationPublic:
    """A conversation with its members (members only)."""
    return await ctx.chat.get_conversation(caller.user_id, conversation_id)


@router.patch("/conversations/{conversation_id}")
async def rename(
    conversation_id: ConversationId, body: ConversationUpdate, ctx: Ctx, caller: Caller
) -> ConversationPublic:
    """Rename a group (owner or admin)."""
    return await ctx.chat.rename(caller.user_id, conversation_id, body.title)


@router.post("/conversations/{conversation_id}/members")
async def add_members(
    conversation_id: ConversationId, body: MembersCreate, ctx: Ctx, caller: Caller
) -> ConversationPublic:
    """Add users to a group (owner or admin)."""
    return await ctx.chat.add_members(caller.user_id, conversation_id, body.user_ids, body.role)


@router.delete(
    "/conversations/{conversation_id}/members/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
)
async def remove_member(
    conversation_id: ConversationId, user_id: UserId, ctx: Ctx, caller: Caller
) -> None:
    """Remove a member (removing yourself is leaving)."""
    await ctx.chat.remove_member(caller.user_id, conversation_id, user_id)


@router.put("/conversations/{conversation_id}/members/{user_id}/role")
async def set_role(
    conversation_id: ConversationId, user_id: UserId, body: RoleUpdate, ctx: Ctx, caller: Caller
) -> ConversationPublic:
    """Change a member's role (owner only; "owner" hands ownership over)."""
    return await ctx.chat.set_role(caller.user_id, conversation_id, user_id, body.role)


@router.post("/conversations/{conversation_id}/leave", status_code=status.HTTP_204_NO_CONTENT)
async def leave(conversation_id: ConversationId, ctx: Ctx, caller: Caller) -> None:
    """Leave a group."""
    await ctx.chat.leave(caller.user_id, conversation_id)


@router.get("/conversations/{conversation_id}/messages")
async def history(
    conversation_id: ConversationId,
    ctx: Ctx,
    caller: Caller,
    after_seq: SeqQuery = None,
    before_seq: SeqQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> MessagePagePublic:
    """A page of the log: after_seq pages forwards, before_seq backwards, neither = newest."""
    return await ctx.chat.history(
        caller.user_id, conversation_id, after_seq=after_seq, before_seq=before_seq, limit=limit
    )


@router.post("/conversations/{conversation_id}/read")
async def mark_read(
    conversation_id: ConversationId, body: ReadCreate, ctx: Ctx, caller: Caller
) -> ReceiptPublic:
    """Mark everything up to seq read."""
    return await ctx.chat.mark_read(caller.user_id, conversation_id, body.seq)


@router.post(
    "/messages",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": AckPublic, "description": "a resend: the original ack"}},
)
async def send_message(
    body: MessageCreate, ctx: Ctx, caller: Caller, response: Response
) -> AckPublic:
    """Send a message (idempotent by client_msg_id); answers once it is durable."""
    ack = await ctx.chat.send(caller.user_id, body)
    if ack.duplicate:
        response.status_code = status.HTTP_200_OK
    return ack
