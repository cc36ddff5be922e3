"""Payloads the entities publish on the event bus.

Each payload is the JSON of a server WebSocket frame from ``warbler.protocol`` (``message``,
``receipt``, ``conversation``), so a gateway can forward it to sockets unchanged. Built with
``json.dumps`` rather than the pydantic models because it runs once per committed message;
tests check that every payload parses as a ``ServerFrame``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from actors.messages import MessageEvent, Receipt
from warbler.protocol import wire_time


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def message_payload(event: MessageEvent) -> bytes:
    """A ``message`` frame for a committed message."""
    return _dump(
        {
            "type": "message",
            "conversation_id": event.conversation_id,
            "seq": event.seq,
            "sender_id": event.sender_id,
            "client_msg_id": event.client_msg_id,
            "kind": event.kind,
            "body": event.body,
            "created_at": wire_time(event.created_at),
        }
    )


def receipt_payload(receipt: Receipt) -> bytes:
    """A ``receipt`` frame: a member's new read position."""
    return _dump(
        {
            "type": "receipt",
            "conversation_id": receipt.conversation_id,
            "user_id": receipt.user_id,
            "read_seq": receipt.read_seq,
        }
    )


def conversation_payload(
    event: Literal["added", "removed", "updated"], conversation_id: int
) -> bytes:
    """A ``conversation`` frame for a user's channel: they joined, left, or it changed."""
    return _dump({"type": "conversation", "event": event, "conversation_id": conversation_id})
