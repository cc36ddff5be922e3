"""Bus payloads (warbler.protocol.events): each parses as the server frame it claims to be, and
a `message` payload is byte for byte the frame the gateway used to re-encode for sockets."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from warbler.protocol import (
    MessageDeltaFrame,
    conversation_payload,
    from_entity_body,
    message_delta_payload,
    message_payload,
    parse_chat_frame,
    parse_server_frame,
    presence_payload,
    receipt_payload,
    to_entity_body,
    typing_payload,
    wire_time,
)

_AT = datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=UTC)


def _old_gateway_frame(kind: str, body: dict[str, Any]) -> str:
    # What the gateway sent before it forwarded bytes: the entity published the stored body
    # (ensure_ascii=False), the gateway decoded it, put the wire body in and re-encoded it.
    published = json.dumps(
        {
            "type": "message",
            "conversation_id": 7,
            "seq": 3,
            "sender_id": 11,
            "client_msg_id": "c-1",
            "kind": kind,
            "body": body,
            "created_at": wire_time(_AT),
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    frame = json.loads(published)
    frame["body"] = from_entity_body(str(frame.get("kind")), frame.get("body"))
    return json.dumps(frame, separators=(",", ":"))


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("text", {"text": "hi"}),
        ("text", {"text": "héllo 👋 \"q\" \\ \n"}),
        ("json", {"a": [1, 2.5, None, True], "b": {"ü": "x"}}),
        ("json", {"text": "", "bot": {"streaming": True, "bot_id": 4}}),
        ("system", {"op": "add", "user_ids": [1, 2]}),
    ],
)
def test_message_payload_is_the_frame_sockets_got_before(kind: str, body: dict[str, Any]) -> None:
    payload = message_payload(7, 3, 11, "c-1", kind, body, _AT)
    assert payload.decode() == _old_gateway_frame(kind, body)
    frame = parse_server_frame(payload)
    assert frame.type == "message"
    assert frame.body == from_entity_body(kind, body)
    assert frame.created_at == _AT


def test_entity_body_round_trip() -> None:
    assert from_entity_body("text", to_entity_body("text", "hi")) == "hi"
    assert from_entity_body("json", to_entity_body("json", {"k": 1})) == {"k": 1}


def test_every_bus_payload_parses_as_a_server_frame() -> None:
    receipt = parse_server_frame(receipt_payload(7, 11, 3))
    assert receipt.type == "receipt" and (receipt.user_id, receipt.read_seq) == (11, 3)
    conv = parse_server_frame(conversation_payload("added", 7))
    assert conv.type == "conversation" and conv.event == "added" and conv.conversation_id == 7
    for online in (True, False):
        presence = parse_server_frame(presence_payload(11, online))
        assert presence.type == "presence" and presence.online is online and presence.id is None
    typing = parse_server_frame(typing_payload(7, 11, True))
    assert typing.type == "typing" and typing.active is True
    # The exact bytes of the frames that were hand-built or pydantic-dumped before.
    assert presence_payload(11, True) == b'{"type":"presence","id":null,"user_id":11,"online":true}'
    assert typing_payload(7, 11, False) == (
        b'{"type":"typing","conversation_id":7,"user_id":11,"active":false}'
    )


def test_message_delta_payload_parses_as_a_chat_frame() -> None:
    delta = parse_chat_frame(message_delta_payload(7, 3, 11, "so fär", False))
    assert isinstance(delta, MessageDeltaFrame) and delta.text == "so fär" and delta.body is None
    body = {"text": "done", "bot": {"final": True}}
    final = parse_chat_frame(message_delta_payload(7, 3, 11, "done", True, body))
    assert isinstance(final, MessageDeltaFrame) and final.final and final.body == body
