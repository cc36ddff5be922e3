"""Exactly-once, in-order delivery per conversation on top of an at-least-once stream.

The gateway delivers at least once and in order per conversation, but a reconnect can replay
messages already seen and a dead replica can drop some in flight. The sequencer keeps one cursor
per conversation (the highest seq handed to the application with nothing missing below it),
drops what is at or below the cursor, and fills a gap from history before yielding what follows.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Protocol, TypeVar

from warbler.errors import ErrorCode, WarblerError

logger = logging.getLogger(__name__)


class Sequenced(Protocol):
    """Anything that carries a conversation id and its seq in that conversation."""

    @property
    def conversation_id(self) -> int: ...

    @property
    def seq(self) -> int: ...


M = TypeVar("M", bound=Sequenced)

# fetch(conversation_id, after_seq, until_seq) -> messages with after_seq < seq <= until_seq,
# ascending (it may return fewer, or more, the sequencer filters).
Fetch = Callable[[int, int, int], Awaitable[list[M]]]


class Sequencer:
    """Per-conversation cursors that turn a replaying, possibly gappy stream into an exact one.

    A conversation with no cursor yet counts as cursor ``start`` (0: the application has seen
    nothing of it, so it gets the conversation from its first message). Seed a cursor at the
    conversation's last seq to start "from now" instead.

    Example::

        seq = Sequencer({42: 17})               # seen up to seq 17 in conversation 42
        out = await seq.admit(msg, fetch)       # [] for a duplicate, [missing..., msg] after a gap
    """

    def __init__(self, cursors: Mapping[int, int] | None = None, *, start: int = 0) -> None:
        self._cursors: dict[int, int] = dict(cursors or {})
        self._start = start

    def cursor(self, conversation_id: int) -> int:
        """The highest seq delivered for a conversation (``start`` when it has none yet)."""
        return self._cursors.get(conversation_id, self._start)

    def known(self, conversation_id: int) -> bool:
        """True when the conversation has a cursor of its own."""
        return conversation_id in self._cursors

    def snapshot(self) -> dict[int, int]:
        """A copy of every cursor (persist it to resume a later session)."""
        return dict(self._cursors)

    def seed(self, conversation_id: int, seq: int) -> None:
        """Start a conversation's cursor at ``seq`` unless it already has one (never lowers)."""
        current = self._cursors.get(conversation_id)
        if current is None or seq > current:
            self._cursors[conversation_id] = seq

    def is_duplicate(self, conversation_id: int, seq: int) -> bool:
        """True when ``seq`` was already delivered for this conversation."""
        return seq <= self.cursor(conversation_id)

    async def admit(self, message: M, fetch: Fetch[M]) -> list[M]:
        """Return the messages to hand to the application, in order, for one arriving message.

        Raises ``WarblerError(UNAVAILABLE)`` when history cannot fill a gap (the caller retries;
        the cursor did not move, so nothing is skipped).
        """
        conv, seq = message.conversation_id, message.seq
        current = self.cursor(conv)
        if seq <= current:
            return []
        if seq == current + 1:
            self._cursors[conv] = seq
            return [message]
        logger.info("gap in conversation %s: have %s, got %s; fetching", conv, current, seq)
        missing = await fetch(conv, current, seq - 1)
        out = _contiguous(current, [*missing, message])
        if not out or out[-1].seq != seq:
            # Deliver nothing: the caller retries the whole gap, so order holds.
            raise WarblerError(
                ErrorCode.UNAVAILABLE,
                f"history did not fill seqs {current + 1}..{seq - 1} of conversation {conv}",
            )
        self._cursors[conv] = seq
        return out

    def admit_backlog(self, conversation_id: int, messages: Iterable[M]) -> list[M]:
        """Admit history fetched after the cursor (catch-up): the contiguous run past the cursor."""
        out = _contiguous(self.cursor(conversation_id), messages)
        if out:
            self._cursors[conversation_id] = out[-1].seq
        return out


def _contiguous(current: int, messages: Iterable[M]) -> list[M]:
    """Messages seq current+1, current+2, ... in order (repeats skipped, stops at a hole)."""
    out: list[M] = []
    expected = current + 1
    for m in sorted(messages, key=lambda m: m.seq):
        if m.seq < expected:
            continue
        if m.seq > expected:
            break
        out.append(m)
        expected += 1
    return out
