"""The events a WarblerClient yields: the server's frames, plus the state of the connection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from warbler.protocol import (
    ConversationEventFrame,
    MessageDeltaFrame,
    MessageFrame,
    PresenceFrame,
    ReceiptFrame,
    TypingEventFrame,
)


@dataclass(frozen=True)
class ConnectionEvent:
    """The socket's state changed.

    ``connected``: a socket is authenticated (``resumed`` when it is not the first);
    ``synced``: the catch-up after it is complete, what follows is live;
    ``disconnected``: the socket is gone and the client is reconnecting by itself.
    """

    state: Literal["connected", "synced", "disconnected"]
    reason: str = ""
    resumed: bool = False


# Every message (the user's own included: sent from this client, they arrive with the ack)
# comes as a MessageFrame exactly once, in seq order per conversation; membership changes also
# come as `kind == "system"` messages.
Event = (
    MessageFrame
    | ReceiptFrame
    | TypingEventFrame
    | PresenceFrame
    | ConversationEventFrame
    | ConnectionEvent
    | MessageDeltaFrame  # ChatAI: a bot's answer growing (the text so far; final at the end)
)
