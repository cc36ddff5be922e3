"""The wire protocol: every WebSocket frame and REST body, shared by the gateway and the SDK.

WebSocket frames are JSON objects ``{"type": ..., "id": <client request id, optional>, ...}``.
Frames a client sends are ``ClientFrame``; frames the server sends are ``ServerFrame``. REST
bodies follow the ``XCreate`` (input) / ``XPublic`` (output) naming. docs/protocol.md documents
every model here with an example; keep the two in step.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import IntEnum
from typing import Annotated, Any, Literal, get_args

import pydantic_core
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from warbler.errors import ErrorCode, WarblerError

PROTOCOL_VERSION = 1
API_PREFIX = "/v1"
WS_PATH = "/v1/ws"
# Query parameter that may carry the access token on the WebSocket handshake (browsers cannot
# set headers on a WebSocket); the Authorization header and the hello frame work too.
WS_TOKEN_QUERY = "access_token"
# Seconds the server waits for the hello frame before closing with CloseCode.HELLO_TIMEOUT.
HELLO_TIMEOUT_S = 10.0
PROBLEM_CONTENT_TYPE = "application/problem+json"

# Every integer on the wire fits a signed 64-bit SQL column: larger ones are refused as input
# (a 4xx), never passed to the database (SQLite raised OverflowError: a 500).
INT64_MAX = 2**63 - 1
# A client's request id, echoed in the answer: a short string or an integer (never a bool).
RequestId = (
    Annotated[StrictStr, Field(max_length=64)]
    | Annotated[StrictInt, Field(ge=-INT64_MAX, le=INT64_MAX)]
)
MessageKind = Literal["text", "json", "system"]
SendKind = Literal["text", "json"]
Role = Literal["owner", "admin", "member"]
ConversationKind = Literal["direct", "group"]


# A string stored in a SQL text column: PostgreSQL text cannot hold NUL (the insert failed: a
# 500), and no name or id needs one. A pattern, checked in pydantic's core: a Python validator
# here cost 16% of a send frame's parse (3.5 us of 22).
_NO_NUL = r"^[^\x00]*$"
_SqlText = Annotated[str, Field(pattern=_NO_NUL)]
_ClientMsgId = Annotated[_SqlText, Field(min_length=1, max_length=64)]
_Username = Annotated[str, Field(min_length=3, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")]
_Password = Annotated[str, Field(min_length=8, max_length=256)]
_DisplayName = Annotated[_SqlText, Field(min_length=1, max_length=64)]
_Title = Annotated[_SqlText, Field(min_length=1, max_length=128)]
_Id = Annotated[int, Field(ge=1, le=INT64_MAX)]
_Seq = Annotated[int, Field(ge=0, le=INT64_MAX)]
# Public aliases for route parameters (path and query) so the schema and behaviour agree.
Id = _Id
Seq = _Seq


def wire_time(value: datetime) -> str:
    """The one encoding of a time on the wire: ISO 8601 in UTC with a ``Z`` (pydantic writes
    ``Z``, ``isoformat`` ``+00:00``, and a naive time no zone at all; clients saw all three)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # our stores keep UTC; a naive one is UTC too
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# A datetime field of a wire model: encoded by ``wire_time`` in JSON.
WireTime = Annotated[datetime, PlainSerializer(wire_time, return_type=str, when_used="json")]


class CloseCode(IntEnum):
    """WebSocket close codes the server uses (4xxx are application codes)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # the server is shutting down this replica; reconnect
    INTERNAL = 1011  # an unexpected server fault; reconnect with backoff
    TOO_BIG = 1009  # a frame above the WebSocket server's own limit (16 MiB)
    SERVICE_RESTART = 1012  # the replica is draining; reconnect elsewhere now
    TRY_AGAIN_LATER = 1013  # the socket fell too far behind; reconnect and resume
    BAD_HELLO = 4400  # the first frame was not a valid hello
    UNAUTHENTICATED = 4401  # no token, a bad token, or an expired token
    REVOKED = 4403  # the session was logged out
    HELLO_TIMEOUT = 4408  # no hello within HELLO_TIMEOUT_S
    UNSUPPORTED_PROTOCOL = 4426  # hello.protocol is not a version this server speaks


class _Model(BaseModel):
    """Base of every wire model: unknown fields are refused so typos surface as errors."""

    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    """Base of models the server sends: clients ignore fields they do not know (forward compat)."""

    model_config = ConfigDict(extra="ignore")


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
# WebSocket: client -> server
# ---------------------------------------------------------------------------------------------


class _Request(_Model):
    id: RequestId | None = None


class HelloFrame(_Request):
    """First frame on every socket. Answered by `hello_ok`, then (with cursors) a sync."""

    type: Literal["hello"] = "hello"
    protocol: int = Field(default=PROTOCOL_VERSION, ge=0, le=INT64_MAX)
    token: str | None = Field(default=None, max_length=4096)
    device_id: _SqlText | None = Field(default=None, min_length=1, max_length=64)
    # Present: sync right after hello_ok exactly as a `sync` frame with these cursors would.
    cursors: dict[_Id, _Seq] | None = None


class SendFrame(_Request, MessageCreate):
    """Send a message; answered by `ack` (or `error`) carrying the same id."""

    type: Literal["send"] = "send"


class SyncFrame(_Request):
    """Catch up: messages after each cursor, then `sync_done`, then live traffic."""

    type: Literal["sync"] = "sync"
    cursors: dict[_Id, _Seq] = Field(default_factory=dict)


class HistoryFrame(_Request):
    """Page a conversation's log; answered by `history_page`."""

    type: Literal["history"] = "history"
    conversation_id: _Id
    after_seq: _Seq | None = None
    before_seq: _Seq | None = None
    limit: int = Field(default=50, ge=1, le=1000)


class ReadFrame(_Request):
    """Mark read up to seq; answered by `receipt`, which other members receive too."""

    type: Literal["read"] = "read"
    conversation_id: _Id
    seq: _Seq


class TypingFrame(_Request):
    """Ephemeral typing indicator for the other members; no answer."""

    type: Literal["typing"] = "typing"
    conversation_id: _Id
    active: bool = True


class PresenceQueryFrame(_Request):
    """Ask who of these users is online; answered by one `presence` frame per user."""

    type: Literal["presence"] = "presence"
    user_ids: list[_Id] = Field(min_length=1, max_length=1000)


class PingFrame(_Request):
    """Keepalive; answered by `pong`."""

    type: Literal["ping"] = "ping"


ClientFrame = Annotated[
    HelloFrame
    | SendFrame
    | SyncFrame
    | HistoryFrame
    | ReadFrame
    | TypingFrame
    | PresenceQueryFrame
    | PingFrame,
    Field(discriminator="type"),
]


# ---------------------------------------------------------------------------------------------
# WebSocket: server -> client
# ---------------------------------------------------------------------------------------------


class LimitsPublic(_Out):
    """Limits the server enforces, announced in hello_ok."""

    max_frame_bytes: int
    max_body_bytes: int
    send_rate_per_s: float
    send_burst: int
    history_page_max: int


class HelloOkFrame(_Out):
    """The socket is authenticated; live traffic for the user's conversations follows."""

    type: Literal["hello_ok"] = "hello_ok"
    id: RequestId | None = None
    protocol: int = PROTOCOL_VERSION
    user_id: int
    device_id: str
    limits: LimitsPublic
    server_time: WireTime


class AckFrame(AckPublic):
    """A send is durable. The sending socket gets this instead of a `message` frame."""

    type: Literal["ack"] = "ack"
    id: RequestId | None = None


class MessageFrame(MessagePublic):
    """A message in one of the user's conversations (live, or during a sync)."""

    type: Literal["message"] = "message"


class HistoryPageFrame(MessagePagePublic):
    """The answer to a `history` frame."""

    type: Literal["history_page"] = "history_page"
    id: RequestId | None = None


class ReceiptFrame(ReceiptPublic):
    """A member read up to read_seq (also the answer, with id, to the reader's `read`)."""

    type: Literal["receipt"] = "receipt"
    id: RequestId | None = None


class TypingEventFrame(_Out):
    """Another member is (or stopped) typing."""

    type: Literal["typing"] = "typing"
    conversation_id: int
    user_id: int
    active: bool


class PresenceFrame(_Out):
    """A user came online or went offline (pushed for direct peers; or answering a query)."""

    type: Literal["presence"] = "presence"
    id: RequestId | None = None
    user_id: int
    online: bool


class ConversationEventFrame(_Out):
    """The user's membership changed: added to / removed from a conversation, or it changed.

    After ``added`` the socket receives that conversation's live messages; after ``removed``
    it receives none.
    """

    type: Literal["conversation"] = "conversation"
    event: Literal["added", "removed", "updated"]
    conversation_id: int
    conversation: ConversationPublic | None = None


class SyncDoneFrame(_Out):
    """The catch-up is complete: every later `message` frame is live traffic.

    ``cursors`` holds the last seq the client now has for each of its conversations.
    ``truncated`` lists conversations sent without a cursor whose older messages were left
    out (only the newest page was sent): page them with `history` if needed.
    """

    type: Literal["sync_done"] = "sync_done"
    id: RequestId | None = None
    cursors: dict[int, int]
    truncated: list[int] = Field(default_factory=list)


class ErrorFrame(_Out):
    """A request failed; the socket stays open. ``id`` is the failed request's id, if any."""

    type: Literal["error"] = "error"
    id: RequestId | None = None
    code: ErrorCode
    message: str
    details: dict[str, Any] | None = None

    @classmethod
    def from_error(cls, exc: WarblerError, request_id: RequestId | None = None) -> ErrorFrame:
        """The frame for a WarblerError."""
        return cls(id=request_id, code=exc.code, message=exc.message, details=exc.details or None)


class PongFrame(_Out):
    """The answer to `ping`."""

    type: Literal["pong"] = "pong"
    id: RequestId | None = None
    server_time: WireTime


class ReconnectFrame(_Out):
    """This replica is draining: reconnect (resume with cursors) within retry_after_ms."""

    type: Literal["reconnect"] = "reconnect"
    reason: str = "draining"
    retry_after_ms: int = 0


ServerFrame = Annotated[
    HelloOkFrame
    | AckFrame
    | MessageFrame
    | HistoryPageFrame
    | ReceiptFrame
    | TypingEventFrame
    | PresenceFrame
    | ConversationEventFrame
    | SyncDoneFrame
    | ErrorFrame
    | PongFrame
    | ReconnectFrame,
    Field(discriminator="type"),
]

_CLIENT_FRAME: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)
# The `type` of every client frame, for error messages.
_FRAME_TYPES: tuple[str, ...] = tuple(
    str(model.model_fields["type"].default) for model in get_args(get_args(ClientFrame)[0])
)
_SERVER_FRAME: TypeAdapter[ServerFrame] = TypeAdapter(ServerFrame)


def safe_text(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates) replaced, so an error that
    quotes client input can always be sent (a lone surrogate in a frame's id once made building
    the error frame raise, and the socket died with no close frame)."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _request_id(raw: object) -> RequestId | None:
    # Best effort: echo the id of a frame that failed validation, so the client can match it.
    if isinstance(raw, dict):
        rid = raw.get("id")
        if isinstance(rid, int) and not isinstance(rid, bool) and abs(rid) <= INT64_MAX:
            return rid
        if isinstance(rid, str) and len(rid) <= 64 and safe_text(rid) == rid:
            return rid
    return None


def parse_client_frame(data: str | bytes) -> ClientFrame:
    """Decode one client frame; a bad frame raises WarblerError (VALIDATION or BAD_REQUEST).

    The error's ``details`` carry ``request_id`` (when the frame had a usable id) and the
    validation ``errors``.
    """
    try:
        # The hot path: straight from JSON text, no intermediate dict.
        return _CLIENT_FRAME.validate_json(data)
    except ValidationError as exc:
        error = exc
    except (TypeError, ValueError):  # a str UTF-8 cannot encode (a lone surrogate)
        raise WarblerError(ErrorCode.BAD_REQUEST, "the frame is not valid JSON") from None
    invalid = [e for e in error.errors(include_url=False) if e["type"] == "json_invalid"]
    if invalid:
        why = str((invalid[0].get("ctx") or {}).get("error", ""))[:120]
        message = f"the frame is not valid JSON ({why})" if why else "the frame is not valid JSON"
        raise WarblerError(ErrorCode.BAD_REQUEST, message) from None
    try:
        # pydantic's own parser: bounded nesting depth (json.loads raised RecursionError on a
        # deeply nested frame, which nothing caught).
        raw = pydantic_core.from_json(data)
    except (TypeError, ValueError):
        raise WarblerError(ErrorCode.BAD_REQUEST, "the frame is not valid JSON") from None
    if not isinstance(raw, dict):
        raise WarblerError(ErrorCode.BAD_REQUEST, "a frame must be a JSON object")
    rid = _request_id(raw)
    details: dict[str, Any] = {"errors": validation_errors(error)}
    if rid is not None:
        details["request_id"] = rid
    raise WarblerError(ErrorCode.VALIDATION, summarize_errors(details["errors"]), details=details)


def parse_server_frame(data: str | bytes) -> ServerFrame:
    """Decode one server frame (for clients)."""
    return _SERVER_FRAME.validate_json(data)


def dump_frame(frame: BaseModel) -> str:
    """Encode a frame as compact JSON text."""
    return frame.model_dump_json()


def plain_message(error: Mapping[str, Any]) -> str:
    """One validation error (pydantic / FastAPI error dict) as plain English: the few messages
    pydantic words for programmers ("JSON decode error", "Unable to extract tag using
    discriminator 'type'") are reworded; the rest are already readable."""
    kind = str(error.get("type", ""))
    ctx = error.get("ctx") or {}
    if kind == "json_invalid":
        return "the body is not valid JSON"
    if kind == "union_tag_not_found":
        tags = ", ".join(_FRAME_TYPES)
        return f"the frame has no 'type'; expected one of {tags}"
    if kind == "union_tag_invalid":
        tag = safe_text(str(ctx.get("tag", "")))[:64]
        return f"unknown frame type {tag!r}; expected one of {', '.join(_FRAME_TYPES)}"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == _NO_NUL:
        return "must not contain NUL characters"
    return safe_text(str(error.get("msg", "invalid value")))


def validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """JSON-safe validation errors (location, message, type) for problem JSON and error frames."""
    return [
        {
            "loc": [safe_text(str(p))[:64] for p in err["loc"]],
            "msg": plain_message(err),
            "type": err["type"],
        }
        for err in exc.errors(include_url=False, include_input=False)
    ]


def summarize_errors(errors: list[dict[str, Any]], default_loc: str = "frame") -> str:
    """``"<where>: <what>"`` for the first of ``validation_errors``, and how many more."""
    if not errors:
        return f"{default_loc}: invalid input"
    first = errors[0]
    # The tag of a discriminated union adds nothing for a reader ("send.conversation_id").
    loc = [p for p in first["loc"] if p not in _FRAME_TYPES]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    where = f"{'.'.join(loc)}: " if loc else ""
    return f"{where}{first['msg']}{more}"


# ---------------------------------------------------------------------------------------------
# ChatAI: bots, their knowledge bases, and the streamed answer (docs/chatai.md)
# ---------------------------------------------------------------------------------------------


class MessageDeltaFrame(_Out):
    """A bot's answer growing: the whole ``text`` so far of the message logged at ``seq``.

    The answer is first logged as a placeholder (a `message` frame, body
    ``{"text": "", "bot": {"streaming": true}}``); deltas follow in order; the last one has
    ``final: true`` and the stored ``body``, which is what history and sync return from then on.
    A retried provider call starts the text over: always show the newest ``text``.
    """

    type: Literal["message_delta"] = "message_delta"
    conversation_id: int
    seq: int
    sender_id: int
    text: str
    final: bool = False
    body: dict[str, Any] | None = None


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


_DELTA_FRAME: TypeAdapter[MessageDeltaFrame] = TypeAdapter(MessageDeltaFrame)


def parse_chat_frame(data: str | bytes) -> ServerFrame | MessageDeltaFrame:
    """Decode one server frame, ChatAI's ``message_delta`` included (for clients)."""
    try:
        return parse_server_frame(data)
    except ValidationError:
        return _DELTA_FRAME.validate_json(data)
