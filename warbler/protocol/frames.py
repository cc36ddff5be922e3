"""WebSocket frames, and the helpers that parse and dump them.

Frames are JSON objects ``{"type": ..., "id": <client request id, optional>, ...}``. Frames a
client sends are ``ClientFrame``; frames the server sends are ``ServerFrame`` (plus ChatAI's
``MessageDeltaFrame``). docs/protocol.md documents every frame with an example.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Annotated, Any, Literal, get_args

import pydantic_core
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from warbler.errors import ErrorCode, WarblerError
from warbler.protocol.base import (
    _NO_NUL,
    INT64_MAX,
    PROTOCOL_VERSION,
    RequestId,
    WireTime,
    _Id,
    _Model,
    _Out,
    _Seq,
    _SqlText,
)
from warbler.protocol.rest import (
    AckPublic,
    ConversationPublic,
    MessageCreate,
    MessagePagePublic,
    MessagePublic,
    ReceiptPublic,
)


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
# ChatAI: the streamed answer (docs/chatai.md)
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


_DELTA_FRAME: TypeAdapter[MessageDeltaFrame] = TypeAdapter(MessageDeltaFrame)


def parse_chat_frame(data: str | bytes) -> ServerFrame | MessageDeltaFrame:
    """Decode one server frame, ChatAI's ``message_delta`` included (for clients)."""
    try:
        return parse_server_frame(data)
    except ValidationError:
        return _DELTA_FRAME.validate_json(data)
