"""The payloads published on the event bus: the one encoder of each.

Each payload is the JSON text of a server frame from ``frames`` (``message``, ``receipt``,
``conversation``, ``presence``, ``typing``, ``message_delta``), so a gateway forwards it to
sockets as it is, with no decode and re-encode. Built with ``json.dumps`` of a dict rather than
the pydantic models because it runs once per committed message; tests check that every
payload parses as a ``ServerFrame`` (or a ``MessageDeltaFrame``).

Entities store every body as a JSON object: a text message's string is kept as
``{"text": ...}`` and goes back on the wire as the string (``to_entity_body`` /
``from_entity_body``); ``message_payload`` writes the wire form.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import JsonValue

from warbler.protocol.base import wire_time

_TEXT_FIELD = "text"
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
# Message frames are ASCII-escaped, as the gateway wrote them when it re-encoded each one: the
# forwarded bytes are the same bytes sockets got before.
_dumps_ascii = json.JSONEncoder(separators=(",", ":")).encode


def _dump(obj: dict[str, Any]) -> bytes:
    return _dumps(obj).encode()


def to_entity_body(kind: str, body: JsonValue) -> dict[str, Any]:
    """The object an entity stores for a validated wire body."""
    if kind == "text":
        return {_TEXT_FIELD: body}
    assert isinstance(body, dict)
    return dict(body)


def from_entity_body(kind: str, body: Any) -> JsonValue:
    """The wire body for a stored one (a text message's string)."""
    if kind == "text" and isinstance(body, dict) and isinstance(body.get(_TEXT_FIELD), str):
        text: str = body[_TEXT_FIELD]
        return text
    value: JsonValue = body
    return value


def message_payload(
    conversation_id: int,
    seq: int,
    sender_id: int,
    client_msg_id: str,
    kind: str,
    body: dict[str, Any],
    created_at: datetime,
) -> bytes:
    """A ``message`` frame for a committed message (``body`` as the entity stores it)."""
    return _dumps_ascii(
        {
            "type": "message",
            "conversation_id": conversation_id,
            "seq": seq,
            "sender_id": sender_id,
            "client_msg_id": client_msg_id,
            "kind": kind,
            "body": from_entity_body(kind, body),
            "created_at": wire_time(created_at),
        }
    ).encode()


def receipt_payload(conversation_id: int, user_id: int, read_seq: int) -> bytes:
    """A ``receipt`` frame: a member's new read position."""
    return _dump(
        {
            "type": "receipt",
            "conversation_id": conversation_id,
            "user_id": user_id,
            "read_seq": read_seq,
        }
    )


def conversation_payload(
    event: Literal["added", "removed", "updated"], conversation_id: int
) -> bytes:
    """A ``conversation`` frame for a user's channel: they joined, left, or it changed."""
    return _dump({"type": "conversation", "event": event, "conversation_id": conversation_id})


def presence_payload(user_id: int, online: bool) -> bytes:
    """A ``presence`` frame for a user's direct peers: they came online or went offline."""
    return _dump({"type": "presence", "id": None, "user_id": user_id, "online": online})


def typing_payload(conversation_id: int, user_id: int, active: bool) -> bytes:
    """A ``typing`` frame for the other members of a conversation."""
    return _dump(
        {
            "type": "typing",
            "conversation_id": conversation_id,
            "user_id": user_id,
            "active": active,
        }
    )


def message_delta_payload(
    conversation_id: int,
    seq: int,
    sender_id: int,
    text: str,
    final: bool,
    body: dict[str, Any] | None = None,
) -> bytes:
    """A ``message_delta`` frame (ChatAI): the text so far of the bot's answer logged at
    ``seq``; the final one carries the stored body."""
    frame: dict[str, Any] = {
        "type": "message_delta",
        "conversation_id": conversation_id,
        "seq": seq,
        "sender_id": sender_id,
        "text": text,
        "final": final,
    }
    if body is not None:
        frame["body"] = body
    return _dump(frame)
