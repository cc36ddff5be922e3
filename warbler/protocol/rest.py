"""REST bodies: ``XCreate`` (input) and ``XPublic`` (output) models, and message bodies.

Several are also the payload of a WebSocket frame (``frames`` subclasses them). docs/protocol.md
documents every model with an example; keep the two in step.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, JsonValue, model_validator

from warbler.errors import ErrorCode
from warbler.protocol.base import (
    INT64_MAX,
    ConversationKind,
    MessageKind,
    Role,
    SendKind,
    WireTime,
    _ClientMsgId,
    _DisplayName,
    _Id,
    _Model,
    _Out,
    _Password,
    _Seq,
    _SqlText,
    _Title,
    _Username,
)


def body_size(body: JsonValue) -> int:
    """Bytes of a message body as stored: UTF-8 of the text, or of the compact JSON."""
    if isinstance(body, str):
        return len(body.encode())
    return len(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())


def _check_body(kind: str, body: JsonValue) -> None:
    if kind == "text" and not isinstance(body, str):
        raise ValueError("a text message needs a string body")
    if kind == "text" and not body:
        raise ValueError("a text message needs a non-empty body")
    if kind == "json" and not isinstance(body, dict):
        raise ValueError("a json message needs a JSON object body")
    if kind == "json":
        try:
            # NaN and Infinity (1e400 parses as inf) are not JSON: SQL JSON columns refuse them.
            json.dumps(body, allow_nan=False)
        except ValueError:
            raise ValueError("a json body must not hold NaN or Infinity") from None


# ---------------------------------------------------------------------------------------------
# REST bodies: accounts
# ---------------------------------------------------------------------------------------------


class UserCreate(_Model):
    """POST /v1/auth/register."""

    username: _Username
    password: _Password
    display_name: _DisplayName | None = None


class UserUpdate(_Model):
    """PATCH /v1/users/me."""

    display_name: _DisplayName


class UserPublic(_Out):
    """A user as others see it."""

    id: int
    username: str
    display_name: str
    created_at: WireTime


class SessionCreate(_Model):
    """POST /v1/auth/login."""

    username: _SqlText = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class RefreshCreate(_Model):
    """POST /v1/auth/refresh: trade a refresh token for a new pair (the old one is revoked)."""

    refresh_token: str = Field(min_length=1, max_length=256)


class LogoutCreate(_Model):
    """POST /v1/auth/logout: revoke this refresh token, or every one of the user's."""

    refresh_token: str | None = Field(default=None, max_length=256)
    all_devices: bool = False


class TokenPublic(_Out):
    """An access token (short-lived, signed) and a refresh token (long-lived, rotated)."""

    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    user: UserPublic


# ---------------------------------------------------------------------------------------------
# REST bodies: conversations and messages
# ---------------------------------------------------------------------------------------------


class GroupCreate(_Model):
    """POST /v1/conversations: a group; the creator becomes its owner."""

    title: _Title
    member_ids: list[_Id] = Field(default_factory=list, max_length=1000)


class DirectCreate(_Model):
    """POST /v1/conversations/direct: get or open the direct conversation with a user."""

    user_id: _Id


class ConversationUpdate(_Model):
    """PATCH /v1/conversations/{id}: rename a group."""

    title: _Title


class MembersCreate(_Model):
    """POST /v1/conversations/{id}/members."""

    user_ids: list[_Id] = Field(min_length=1, max_length=1000)
    role: Literal["admin", "member"] = "member"


class RoleUpdate(_Model):
    """PUT /v1/conversations/{id}/members/{user_id}/role."""

    role: Role


class MemberPublic(_Out):
    """One member of a conversation."""

    user_id: int
    role: Role
    read_seq: int = 0


class ConversationPublic(_Out):
    """A conversation with its members (GET /v1/conversations/{id})."""

    id: int
    kind: ConversationKind
    title: str | None = None
    members: list[MemberPublic] = Field(default_factory=list)
    last_seq: int = 0


class MessagePublic(_Out):
    """A stored message (REST history, and the payload of the `message` frame)."""

    conversation_id: int
    seq: int
    sender_id: int
    kind: MessageKind
    body: JsonValue
    created_at: WireTime
    client_msg_id: str


class ConversationSummaryPublic(_Out):
    """One row of GET /v1/conversations: what a chat list shows."""

    id: int
    kind: ConversationKind
    title: str | None = None
    last_seq: int = 0
    read_seq: int = 0
    unread: int = 0
    last_message: MessagePublic | None = None
    # For a direct conversation: the other member, so a client can show their name.
    peer_id: int | None = None


class MessageCreate(_Model):
    """POST /v1/messages, and the payload of the `send` frame.

    Exactly one of ``conversation_id`` and ``to_user_id``; ``to_user_id`` opens the direct
    conversation with that user on first send. ``client_msg_id`` makes the send idempotent.
    """

    conversation_id: _Id | None = None
    to_user_id: _Id | None = None
    client_msg_id: _ClientMsgId
    kind: SendKind = "text"
    body: JsonValue

    @model_validator(mode="after")
    def _one_target(self) -> MessageCreate:
        if (self.conversation_id is None) == (self.to_user_id is None):
            raise ValueError("give exactly one of conversation_id and to_user_id")
        _check_body(self.kind, self.body)
        return self


class AckPublic(_Out):
    """The answer to a send: the message is durable under this seq."""

    conversation_id: int
    seq: int
    client_msg_id: str
    created_at: WireTime
    duplicate: bool = False


class MessagePagePublic(_Out):
    """GET /v1/conversations/{id}/messages: ascending seq; has_more says another page exists."""

    conversation_id: int
    messages: list[MessagePublic]
    has_more: bool


class ReadCreate(_Model):
    """POST /v1/conversations/{id}/read: everything up to and including seq is read."""

    seq: _Seq


class ReceiptPublic(_Out):
    """A member's read position (never moves backwards)."""

    conversation_id: int
    user_id: int
    read_seq: int


class PresencePublic(_Out):
    """GET /v1/presence?user_ids=...: who is online now."""

    online: list[int]


class ProblemPublic(_Out):
    """RFC 9457 problem JSON (content type application/problem+json) for every REST error."""

    type: str
    title: str
    status: int
    detail: str
    code: ErrorCode
    instance: str | None = None
    details: dict[str, Any] | None = None


class HealthPublic(_Out):
    """GET /healthz and /readyz."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# ChatAI: bots and their knowledge bases (docs/chatai.md)
# ---------------------------------------------------------------------------------------------


class BotProviderConfig(_Model):
    """Where a bot's words come from: ``extractive`` (offline: the best passages, cited) or an
    OpenAI-compatible chat-completions endpoint (``url`` up to ``/v1``, ``model``, ``api_key``)."""

    kind: Literal["extractive", "openai"] = "extractive"
    url: Annotated[str, Field(max_length=500)] | None = None
    model: Annotated[str, Field(max_length=100)] | None = None
    api_key: Annotated[str, Field(max_length=500)] | None = None

    @model_validator(mode="after")
    def _url_for_openai(self) -> BotProviderConfig:
        if self.kind == "openai" and not self.url:
            raise ValueError("an openai provider needs a url")
        return self


class BotCreate(_Model):
    """POST /v1/bots: the caller becomes the bot's owner."""

    username: _Username
    display_name: _DisplayName | None = None
    avatar: Annotated[str, Field(max_length=16)] = "🤖"
    system_prompt: Annotated[str, Field(max_length=8000)] = ""
    provider: BotProviderConfig = Field(default_factory=BotProviderConfig)
    support_group_id: _Id | None = None
    answer_all: bool = False
    min_confidence: Annotated[float, Field(ge=0.0, le=1.0)] = 0.3
    token_budget: Annotated[int, Field(ge=0, le=INT64_MAX)] = 0


class BotPublic(_Out):
    """A bot as its owner sees it (the provider's key is never shown)."""

    id: int
    user_id: int
    username: str
    display_name: str
    avatar: str
    owner_id: int
    provider: str
    support_group_id: int | None = None
    answer_all: bool = False
    min_confidence: float = 0.3
    token_budget: int = 0
    tokens_used: int = 0
    kb_version: int = 0


class KnowledgeDocPublic(_Out):
    """One document of a bot's knowledge base."""

    name: str
    content_type: str
    chunks: int
    chars: int
    updated_at: datetime


class BotConversationPublic(_Out):
    """Whether a conversation is handed off to a human, and to whom."""

    conversation_id: int
    handed_off: bool
    agent_id: int | None = None
    support_conversation_id: int | None = None
    origin_conversation_id: int | None = None


# -- search (issue 15) ----------------------------------------------------------------------
# GET /v1/search: full-text search over the caller's conversations (storage/search.py).

SEARCH_QUERY_MAX = 200
SEARCH_LIMIT_DEFAULT = 20
SEARCH_LIMIT_MAX = 100


class SearchHitPublic(_Out):
    """A text message that matched. ``snippet`` is a window of ``body`` around the first match;
    ``highlights`` are ``[start, end)`` character offsets of the matched words in ``snippet``."""

    conversation_id: int
    seq: int
    sender_id: int
    created_at: WireTime
    body: str
    snippet: str
    highlights: list[tuple[int, int]]


class SearchPagePublic(_Out):
    """Hits newest first; ``next`` is the ``before`` cursor of the next page (None: no more)."""

    hits: list[SearchHitPublic]
    next: str | None = None
