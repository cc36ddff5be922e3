"""/v1/bots: bots and their knowledge bases; /v1/conversations/{id}/bot and .../handback."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status

from serve.deps import Caller, Ctx
from serve.handlers.bots import BotsHandler
from serve.problems import problems
from serve.routes.params import BotId, ConversationId
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import (
    BotConversationPublic,
    BotCreate,
    BotPublic,
    KnowledgeDocPublic,
)

router = APIRouter(tags=["bots"], responses=problems(401, 403, 404, 409, 429, 503))


def get_bots(request: Request, ctx: Ctx) -> BotsHandler:
    """The replica's BotsHandler (built on first use: most replicas never see a bot call)."""
    handler: BotsHandler | None = getattr(request.app.state, "bots", None)
    if handler is None:
        handler = BotsHandler(ctx.settings, ctx.db, ctx.runtime)
        request.app.state.bots = handler
    return handler


Bots = Annotated[BotsHandler, Depends(get_bots)]


@router.post("/bots", status_code=status.HTTP_201_CREATED)
async def create_bot(body: BotCreate, bots: Bots, caller: Caller) -> BotPublic:
    """Create a bot; the caller owns it (with `WARBLER_BOT_CREATORS=admins`, only the users
    in `WARBLER_BOT_ADMIN_USERNAMES` may)."""
    return await bots.create(caller.user_id, body)


@router.get("/bots")
async def list_bots(bots: Bots, caller: Caller) -> list[BotPublic]:
    """The caller's bots."""
    return await bots.list_bots(caller.user_id)


@router.get("/bots/{bot_id}")
async def get_bot(bot_id: BotId, bots: Bots, caller: Caller) -> BotPublic:
    """One of the caller's bots."""
    return await bots.get(caller.user_id, bot_id)


@router.put("/bots/{bot_id}/documents/{name}")
async def upload_document(
    bot_id: BotId, name: str, request: Request, bots: Bots, caller: Caller
) -> KnowledgeDocPublic:
    """Upload (or replace) a document: the request body is the file, text/plain,
    text/markdown or text/html (UTF-8); it is chunked, embedded and indexed before the answer."""
    data = await request.body()
    if not data:
        raise WarblerError(ErrorCode.VALIDATION, "the request body is the document; it is empty")
    return await bots.upload(
        caller.user_id, bot_id, name, request.headers.get("content-type"), data
    )


@router.get("/bots/{bot_id}/documents")
async def list_documents(bot_id: BotId, bots: Bots, caller: Caller) -> list[KnowledgeDocPublic]:
    """The bot's knowledge base."""
    return await bots.documents(caller.user_id, bot_id)


@router.delete("/bots/{bot_id}/documents/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_document(bot_id: BotId, name: str, bots: Bots, caller: Caller) -> Response:
    """Remove a document (its passages are no longer searched)."""
    await bots.delete_document(caller.user_id, bot_id, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/conversations/{conversation_id}/bot")
async def bot_state(
    conversation_id: ConversationId, bots: Bots, caller: Caller
) -> BotConversationPublic:
    """Whether the conversation is handed off to a human (members only)."""
    return await bots.conversation_state(caller.user_id, conversation_id)


@router.post("/conversations/{conversation_id}/handback")
async def hand_back(
    conversation_id: ConversationId, bots: Bots, caller: Caller
) -> BotConversationPublic:
    """An agent of the bot's support group gives the conversation back to the bot."""
    return await bots.hand_back(caller.user_id, conversation_id)
