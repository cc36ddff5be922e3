"""Messages to the bot entity of a conversation (``"bot:<conversation id>"``) and its answers."""

from __future__ import annotations

from dataclasses import dataclass

from actors.messages import Request, _Wire

BOT = "bot"


def bot_key(conversation_id: int) -> str:
    """The key of the entity that runs the bots of one conversation."""
    return f"{BOT}:{conversation_id}"


@dataclass(frozen=True, slots=True)
class BotConversationInfo(_Wire):
    """The bots' view of one conversation."""

    conversation_id: int
    handed_off: bool
    agent_id: int | None
    support_conversation_id: int | None
    origin_conversation_id: int | None
    answered: int


@dataclass(frozen=True, slots=True)
class TurnResult(_Wire):
    """What a BotTurn did: ``outcome`` is answered, duplicate, silent, handoff, rate_limited,
    budget, not_addressed or failed; ``seq`` the answer's seq, if one was logged."""

    outcome: str
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class BotTurn(Request[TurnResult]):
    """A member's message was committed in a conversation with bots (sent by the conversation
    entity after the commit). Idempotent by ``(conversation_id, seq)``: the answer's
    ``client_msg_id`` is derived from it."""

    conversation_id: int
    seq: int
    sender_id: int
    text: str
    conversation_kind: str
    bot_user_ids: tuple[int, ...]
    # The trigger's commit time (epoch seconds): the per-minute turn limit counts messages by
    # when they were sent, not by when a busy host got to them, so a backlog (or a turn
    # swept up after a crash) is limited the same way as a live one.
    sent_at: float = 0.0


@dataclass(frozen=True, slots=True)
class HandBack(Request[BotConversationInfo]):
    """An agent gives the conversation back to its bot (the bot answers again)."""

    agent_id: int


@dataclass(frozen=True, slots=True)
class RequestHandoff(Request[BotConversationInfo]):
    """A member asks for a human (the web page's "Talk to a human" button)."""

    user_id: int


@dataclass(frozen=True, slots=True)
class OpenSupport(Request[BotConversationInfo]):
    """Sent by a handoff to the new support conversation's bot entity."""

    origin_id: int
    agent_id: int
    bot_id: int


@dataclass(frozen=True, slots=True)
class LinkedHandBack(Request[BotConversationInfo]):
    """The other side of a hand-back (sent by the side that checked the agent)."""

    from_id: int


@dataclass(frozen=True, slots=True)
class GetBotState(Request[BotConversationInfo]):
    """Whether the conversation is handed off, and to whom (members only)."""

    user_id: int
