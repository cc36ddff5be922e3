"""ChatAI in the SDK: manage bots and their knowledge bases, read a bot's answer from a
message body, and the handoff controls.

Bot answers arrive as ordinary messages (kind ``json``, body ``{"text": ..., "bot": {...}}``)
followed by ``MessageDeltaFrame`` events from ``WarblerClient.events()`` while they grow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import TypeAdapter

from client.rest import RestClient, error_from_response
from warbler.protocol import (
    API_PREFIX,
    BotConversationPublic,
    BotCreate,
    BotPublic,
    KnowledgeDocPublic,
)

_CONTENT_TYPES = {
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".txt": "text/plain",
    ".pdf": "application/pdf",
}


@dataclass(frozen=True)
class BotAnswer:
    """What a client shows for a bot's message."""

    text: str
    streaming: bool
    sources: list[dict[str, Any]]
    handoff: dict[str, Any] | None
    error: str | None


def bot_answer(body: object) -> BotAnswer | None:
    """The bot's answer in a message body, or None when the body is not a bot's."""
    if not isinstance(body, dict) or not isinstance(body.get("bot"), dict):
        return None
    meta: dict[str, Any] = body["bot"]
    text = body.get("text")
    return BotAnswer(
        text=text if isinstance(text, str) else "",
        streaming=not meta.get("final", False),
        sources=list(meta.get("sources") or []),
        handoff=meta.get("handoff"),
        error=meta.get("error"),
    )


def sources_line(answer: BotAnswer) -> str:
    """``Sources: faq.md › How do I reset my password?`` (empty without sources)."""
    if not answer.sources:
        return ""
    return "Sources: " + "; ".join(
        f"{s.get('document')} › {s.get('heading')}" if s.get("heading") else str(s.get("document"))
        for s in answer.sources
    )


class BotsClient:
    """REST calls for bots, with the tokens of a logged-in ``RestClient``."""

    def __init__(self, rest: RestClient, *, timeout_s: float = 120.0) -> None:
        self._rest = rest
        self._http = httpx.AsyncClient(base_url=rest.base_url + API_PREFIX, timeout=timeout_s)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        token = await self._rest.access_token()
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        response = await self._http.request(method, path, headers=headers, **kwargs)
        if not response.is_success:
            raise error_from_response(response)
        return response.json() if response.content else None

    async def create(self, bot: BotCreate) -> BotPublic:
        """Create a bot owned by the logged-in user."""
        data = await self._request("POST", "/bots", json=bot.model_dump(exclude_none=True))
        return BotPublic.model_validate(data)

    async def list_bots(self) -> list[BotPublic]:
        """The user's bots."""
        return TypeAdapter(list[BotPublic]).validate_python(await self._request("GET", "/bots"))

    async def find(self, name_or_id: str) -> BotPublic:
        """One of the user's bots by id or username."""
        for bot in await self.list_bots():
            if str(bot.id) == name_or_id or bot.username == name_or_id:
                return bot
        from warbler.errors import ErrorCode, WarblerError

        raise WarblerError(ErrorCode.NOT_FOUND, f"you have no bot {name_or_id!r}")

    async def upload(
        self, bot_id: int, name: str, data: bytes, content_type: str | None = None
    ) -> KnowledgeDocPublic:
        """Add or replace one document of the bot's knowledge base."""
        kind = content_type or _CONTENT_TYPES.get(Path(name).suffix.lower(), "text/plain")
        answer = await self._request(
            "PUT",
            f"/bots/{bot_id}/documents/{name}",
            content=data,
            headers={"Content-Type": kind},
        )
        return KnowledgeDocPublic.model_validate(answer)

    async def documents(self, bot_id: int) -> list[KnowledgeDocPublic]:
        """The bot's documents."""
        data = await self._request("GET", f"/bots/{bot_id}/documents")
        return TypeAdapter(list[KnowledgeDocPublic]).validate_python(data)

    async def conversation_state(self, conversation_id: int) -> BotConversationPublic:
        """Whether a conversation is handed off to a human."""
        data = await self._request("GET", f"/conversations/{conversation_id}/bot")
        return BotConversationPublic.model_validate(data)

    async def hand_back(self, conversation_id: int) -> BotConversationPublic:
        """As an agent: give a handed-off conversation back to its bot."""
        data = await self._request("POST", f"/conversations/{conversation_id}/handback")
        return BotConversationPublic.model_validate(data)
