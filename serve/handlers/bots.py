"""Bots and their knowledge bases (REST), and the handoff controls of a conversation.

Bot rows and knowledge documents are not conversation state (no entity owns them), so this
handler writes them through their stores, as accounts do; everything that touches a
conversation goes to its entities (the bot entity ``bot:<id>`` for hand-back and state).
"""

from __future__ import annotations

import asyncio
import logging

from actors.bot_embedding import EmbedClient
from actors.bot_knowledge import chunk_text, content_type_of, extract_text
from actors.bot_messages import BotConversationInfo, GetBotState, HandBack, bot_key
from actors.runtime import Runtime
from storage import ConversationStore, Database, UserStore
from storage.bots import BotStore
from storage.knowledge import KnowledgeStore
from storage.models import Bot, User
from warbler.config import Settings
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import (
    BotConversationPublic,
    BotCreate,
    BotPublic,
    KnowledgeDocPublic,
)
from warbler.sealed import seal_provider

logger = logging.getLogger(__name__)

# Passages embedded per call to the embedder deployment (its batches fill across callers).
_EMBED_CHUNK = 64


def bot_public(bot: Bot, user: User) -> BotPublic:
    """The owner's view of a bot (never the provider's key)."""
    return BotPublic(
        id=bot.id,
        user_id=bot.user_id,
        username=user.username,
        display_name=user.display_name,
        avatar=bot.avatar,
        owner_id=bot.owner_id,
        provider=str(bot.provider.get("kind", "extractive")),
        support_group_id=bot.support_group_id,
        answer_all=bot.answer_all,
        min_confidence=bot.min_confidence,
        token_budget=bot.token_budget,
        tokens_used=bot.tokens_used,
        kb_version=bot.kb_version,
    )


def _state_public(info: BotConversationInfo) -> BotConversationPublic:
    return BotConversationPublic(
        conversation_id=info.conversation_id,
        handed_off=info.handed_off,
        agent_id=info.agent_id,
        support_conversation_id=info.support_conversation_id,
        origin_conversation_id=info.origin_conversation_id,
    )


class BotsHandler:
    """What /v1/bots and the handoff routes call."""

    def __init__(self, settings: Settings, db: Database, runtime: Runtime) -> None:
        self._settings = settings
        self._runtime = runtime
        self._bots = BotStore(db)
        self._knowledge = KnowledgeStore(db)
        self._users = UserStore(db)
        self._conversations = ConversationStore(db)
        self._embedder = EmbedClient(settings.namespace)

    async def _may_create(self, user_id: int) -> User:
        user = await self._users.get_user(user_id)
        if user is None or user.kind == "bot":
            raise WarblerError(ErrorCode.FORBIDDEN, "bots cannot create bots")
        if self._settings.bot_creators == "admins" and (
            user.username not in self._settings.bot_admin_usernames
        ):
            raise WarblerError(ErrorCode.FORBIDDEN, "only the configured bot admins create bots")
        return user

    async def create(self, caller_id: int, body: BotCreate) -> BotPublic:
        """Create a bot owned by the caller. A support group must be one the caller manages
        (its members become the bot's human agents)."""
        await self._may_create(caller_id)
        if body.support_group_id is not None:
            membership = await self._conversations.get_membership(body.support_group_id, caller_id)
            if membership is None or membership.role not in ("owner", "admin"):
                raise WarblerError(
                    ErrorCode.FORBIDDEN, "the support group must be a group you own or administer"
                )
        # The API key is stored sealed (warbler/sealed.py); only the bot entity opens it.
        provider = seal_provider(
            body.provider.model_dump(exclude_none=True), self._settings.resolved_secret_key()
        )
        bot, user = await self._bots.create_bot(
            caller_id,
            body.username,
            body.display_name or body.username,
            avatar=body.avatar,
            system_prompt=body.system_prompt,
            provider=provider,
            support_group_id=body.support_group_id,
            answer_all=body.answer_all,
            min_confidence=body.min_confidence,
            token_budget=body.token_budget,
        )
        logger.info("user %s created bot %s (%s)", caller_id, bot.id, user.username)
        return bot_public(bot, user)

    async def _owned(self, caller_id: int, bot_id: int) -> Bot:
        bot = await self._bots.get_bot(bot_id)
        if bot is None or bot.owner_id != caller_id:
            # One answer for "no such bot" and "not yours": ids reveal nothing.
            raise WarblerError(ErrorCode.NOT_FOUND, f"no bot {bot_id} of yours")
        return bot

    async def get(self, caller_id: int, bot_id: int) -> BotPublic:
        """One of the caller's bots."""
        bot = await self._owned(caller_id, bot_id)
        user = await self._users.get_user(bot.user_id)
        assert user is not None
        return bot_public(bot, user)

    async def list_bots(self, caller_id: int) -> list[BotPublic]:
        """The caller's bots."""
        bots = await self._bots.list_bots(caller_id)
        users = {u.id: u for u in await self._users.list_users([b.user_id for b in bots])}
        return [bot_public(b, users[b.user_id]) for b in bots if b.user_id in users]

    async def upload(
        self, caller_id: int, bot_id: int, name: str, content_type: str | None, data: bytes
    ) -> KnowledgeDocPublic:
        """Index (or re-index) one document: text, passages, vectors, stored in one go."""
        await self._owned(caller_id, bot_id)
        kind = content_type_of(name, content_type)
        # In a thread: a 2 MiB PDF or HTML page takes the CPU for a while, and this loop also
        # serves the replica's sockets.
        text, passages = await asyncio.to_thread(_read_document, kind, data)
        if not passages:
            raise WarblerError(ErrorCode.VALIDATION, "the document has no text to index")
        inputs = [f"{heading}\n{body}" if heading else body for heading, body in passages]
        vectors = []
        for i in range(0, len(inputs), _EMBED_CHUNK):
            vectors.append(await self._embedder.embed(inputs[i : i + _EMBED_CHUNK]))
        import numpy as np

        doc = await self._knowledge.replace_document(
            bot_id, name, kind, len(text), passages, np.vstack(vectors)
        )
        return KnowledgeDocPublic(
            name=doc.name,
            content_type=doc.content_type,
            chunks=doc.chunks,
            chars=doc.chars,
            updated_at=doc.updated_at,
        )

    async def documents(self, caller_id: int, bot_id: int) -> list[KnowledgeDocPublic]:
        """The bot's documents."""
        await self._owned(caller_id, bot_id)
        return [
            KnowledgeDocPublic(
                name=d.name,
                content_type=d.content_type,
                chunks=d.chunks,
                chars=d.chars,
                updated_at=d.updated_at,
            )
            for d in await self._knowledge.list_documents(bot_id)
        ]

    async def delete_document(self, caller_id: int, bot_id: int, name: str) -> None:
        """Remove a document from the knowledge base."""
        await self._owned(caller_id, bot_id)
        if not await self._knowledge.delete_document(bot_id, name):
            raise WarblerError(ErrorCode.NOT_FOUND, f"no document {name!r}")

    async def _member(self, caller_id: int, conversation_id: int) -> None:
        if await self._conversations.get_membership(conversation_id, caller_id) is None:
            raise WarblerError(
                ErrorCode.NOT_MEMBER, f"you are not a member of conversation {conversation_id}"
            )

    async def conversation_state(
        self, caller_id: int, conversation_id: int
    ) -> BotConversationPublic:
        """Handed off or not (members only)."""
        await self._member(caller_id, conversation_id)
        info = await self._runtime.call(bot_key(conversation_id), GetBotState(caller_id))
        return _state_public(info)

    async def hand_back(self, caller_id: int, conversation_id: int) -> BotConversationPublic:
        """An agent gives a handed-off conversation back to its bot."""
        await self._member(caller_id, conversation_id)
        info = await self._runtime.call(bot_key(conversation_id), HandBack(caller_id))
        return _state_public(info)


def _read_document(kind: str, data: bytes) -> tuple[str, list[tuple[str, str]]]:
    """The document's text and its passages (one thread hop for both)."""
    text = extract_text(kind, data)
    return text, chunk_text(text)
