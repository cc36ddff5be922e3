"""One authenticated socket as the delivery hub sees it: an outgoing queue, and per conversation
the highest seq this socket has been given (for dedupe and gap detection)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from warbler.protocol import CloseCode

logger = logging.getLogger(__name__)

_ids = itertools.count(1)
# How long a socket remembers its own in-flight sends, to not echo them back as `message` frames.
_OWN_SEND_TTL_S = 120.0


@dataclass(frozen=True, slots=True)
class LiveMessage:
    """A committed message as it arrived on the bus, already encoded as a `message` frame."""

    conversation_id: int
    seq: int
    sender_id: int
    client_msg_id: str
    text: str


class Connection:
    """A socket's delivery state. All methods run on the replica's event loop (no locks)."""

    def __init__(
        self,
        send_text: Callable[[str], Awaitable[None]],
        user_id: int,
        device_id: str,
        *,
        max_queue: int,
    ) -> None:
        self.id = next(_ids)
        # When the socket was opened (a haproxy reload concerns the sockets opened before it).
        self.opened_at = time.monotonic()
        self.user_id = user_id
        self.device_id = device_id
        # The login session and issue time of the token it said hello with (revocations).
        self.session_id = ""
        self.token_issued_at = 0
        self.delivered: dict[int, int] = {}
        self._send_text = send_text
        self._max_queue = max_queue
        self._queue: deque[str] = deque()
        self._wakeup = asyncio.Event()
        self._sync_all = 0
        self._sync_convs: set[int] = set()
        self._buffer: list[LiveMessage] = []
        self._own_sends: dict[str, float] = {}
        # Per conversation, the read position this socket itself asked for or was answered:
        # the entity's broadcast of that receipt would repeat the answer (without its id).
        self._own_reads: dict[int, int] = {}
        self.closed = False
        self.overflowed = False
        # Set when the socket must go (slow consumer, lost ordering); the endpoint closes it.
        self.close_code: int | None = None
        self.close_event = asyncio.Event()

    # -- outgoing ---------------------------------------------------------------------------

    def send(self, text: str) -> None:
        """Queue one frame (never blocks). A socket that falls too far behind is closed: it will
        reconnect and resume from its cursors, which is cheaper than buffering without bound."""
        if self.closed:
            return
        if len(self._queue) >= self._max_queue:
            if not self.overflowed:
                self.overflowed = True
                logger.warning(
                    "socket %s of user %s is too slow; closing it", self.id, self.user_id
                )
                self.request_close(CloseCode.TRY_AGAIN_LATER)
            return
        self._queue.append(text)
        self._wakeup.set()

    def request_close(self, code: int) -> None:
        """Ask the endpoint to close this socket with ``code``."""
        if self.close_code is None:
            self.close_code = code
        self.close_event.set()

    async def run_writer(self) -> None:
        """Write queued frames to the socket until it closes."""
        queue = self._queue
        while not self.closed:
            if not queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._send_text(queue.popleft())

    def stop(self) -> None:
        """The socket is gone: drop what is queued and stop the writer."""
        self.closed = True
        self._queue.clear()
        self._wakeup.set()

    # -- own sends --------------------------------------------------------------------------

    def note_own_send(self, client_msg_id: str) -> None:
        """This socket is sending ``client_msg_id``: it gets an ack, not a `message` frame."""
        now = time.monotonic()
        if len(self._own_sends) > 1024:
            self._own_sends = {k: t for k, t in self._own_sends.items() if t > now}
        self._own_sends[client_msg_id] = now + _OWN_SEND_TTL_S

    # -- own reads --------------------------------------------------------------------------

    def note_own_read(self, conversation_id: int, seq: int) -> None:
        """This socket marks ``conversation_id`` read up to ``seq`` (asked, or as answered)."""
        self._own_reads[conversation_id] = seq

    def wants_receipt(self, conversation_id: int, user_id: int, read_seq: int) -> bool:
        """False for the broadcast of a receipt this socket asked for itself: it has the answer
        (a read position never moves back, so one at or below its own tells it nothing)."""
        if user_id != self.user_id:
            return True
        own = self._own_reads.get(conversation_id)
        return own is None or read_seq > own

    # -- live messages and sync -------------------------------------------------------------

    def is_syncing(self, conversation_id: int) -> bool:
        """True while live messages of this conversation are buffered behind a catch-up."""
        return self._sync_all > 0 or conversation_id in self._sync_convs

    def begin_sync(self, conversation_id: int | None = None) -> None:
        """Buffer live messages (of one conversation, or all) until end_sync."""
        if conversation_id is None:
            self._sync_all += 1
        else:
            self._sync_convs.add(conversation_id)

    def end_sync(self, conversation_id: int | None = None) -> list[LiveMessage]:
        """Stop buffering; returns the buffered messages that are now to be offered again."""
        if conversation_id is None:
            self._sync_all -= 1
        else:
            self._sync_convs.discard(conversation_id)
        kept: list[LiveMessage] = []
        released: list[LiveMessage] = []
        for msg in self._buffer:
            (kept if self.is_syncing(msg.conversation_id) else released).append(msg)
        self._buffer = kept
        return released

    def offer(self, msg: LiveMessage) -> int | None:
        """Deliver a live message in order. Returns None when handled (sent, buffered, or a
        duplicate), or the seq this socket has if messages are missing before ``msg``."""
        conv = msg.conversation_id
        if self.is_syncing(conv):
            self._buffer.append(msg)
            return None
        have = self.delivered.get(conv)
        if have is not None:
            if msg.seq <= have:
                return None
            if msg.seq > have + 1:
                return have
        self.delivered[conv] = msg.seq
        if msg.sender_id == self.user_id and msg.client_msg_id in self._own_sends:
            del self._own_sends[msg.client_msg_id]
            return None
        self.send(msg.text)
        return None

    def send_history(
        self, conversation_id: int, seq: int, sender_id: int, client_msg_id: str, text: str
    ) -> None:
        """Send a message read from the log (sync or gap fill) if this socket lacks it (and
        did not send it itself just now: that one was acked)."""
        have = self.delivered.get(conversation_id)
        if have is not None and seq <= have:
            return
        self.delivered[conversation_id] = seq
        if sender_id == self.user_id and client_msg_id in self._own_sends:
            del self._own_sends[client_msg_id]
            return
        self.send(text)

    def forget(self, conversation_id: int) -> None:
        """The user left the conversation: drop its state."""
        self.delivered.pop(conversation_id, None)
        self._sync_convs.discard(conversation_id)
        self._buffer = [m for m in self._buffer if m.conversation_id != conversation_id]
