"""Conversions between the entities' results (actors.messages) and the wire (warbler.protocol).

Entities store every body as a JSON object (``warbler.protocol.to_entity_body`` /
``from_entity_body``), so clients see ``body: "hi"`` for text and the object itself for json and
system messages.
"""

from __future__ import annotations

from actors.messages import ConversationInfo, MessageEvent, Receipt
from warbler.protocol import (
    AckPublic,
    ConversationPublic,
    MemberPublic,
    MessagePublic,
    ReceiptPublic,
    from_entity_body,
)


def message_public(event: MessageEvent) -> MessagePublic:
    """The wire form of a committed message."""
    return MessagePublic(
        conversation_id=event.conversation_id,
        seq=event.seq,
        sender_id=event.sender_id,
        kind=event.kind,
        body=from_entity_body(event.kind, event.body),
        created_at=event.created_at,
        client_msg_id=event.client_msg_id,
    )


def ack_public(event: MessageEvent) -> AckPublic:
    """The ack for an Append's answer."""
    return AckPublic(
        conversation_id=event.conversation_id,
        seq=event.seq,
        client_msg_id=event.client_msg_id,
        created_at=event.created_at,
        duplicate=event.duplicate,
    )


def receipt_public(receipt: Receipt) -> ReceiptPublic:
    """The wire form of a read position."""
    return ReceiptPublic(
        conversation_id=receipt.conversation_id,
        user_id=receipt.user_id,
        read_seq=receipt.read_seq,
    )


def conversation_public(info: ConversationInfo) -> ConversationPublic:
    """The wire form of a conversation's info."""
    return ConversationPublic(
        id=info.conversation_id,
        kind=info.kind,
        title=info.title,
        members=[MemberPublic(user_id=m.user_id, role=m.role) for m in info.members],
        last_seq=info.last_seq,
    )
