"""One load-generator device: a socket speaking the Warbler protocol, recording into a Ledger.

A `Device` says hello, sends time-stamped messages, and records every ack, delivery and error
in the ledger it was given. With ``resume=True`` it behaves as the protocol asks of a client
after a dropped socket: it reconnects with backoff, says hello with its cursors (the server
replays what it missed), and resends every unacked message with the same client_msg_id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import ValidationError

from client.backoff import Backoff
from loadtest.accounting import Ledger
from loadtest.frames import is_ours, message_id, read_stamp, send_frame, stamp_body
from loadtest.wsconn import WsConnection
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import (
    AckFrame,
    ErrorFrame,
    HelloFrame,
    HelloOkFrame,
    MessageFrame,
    PingFrame,
    PongFrame,
    ReconnectFrame,
    SyncDoneFrame,
    SyncFrame,
    dump_frame,
    parse_server_frame,
)

logger = logging.getLogger(__name__)

AckCallback = Callable[["Device"], None]


@dataclass
class _Pending:
    request_id: int
    text: str


@dataclass
class DeviceStats:
    """Counters of one device (summed per generator process)."""

    frames_in: int = 0
    reconnects: int = 0
    # (socket lost, hello_ok again) wall-clock pairs, in ns: how long each outage lasted.
    outages: list[tuple[int, int]] = field(default_factory=list)


class Device:
    """A WebSocket device of one user, driven by a load generator."""

    def __init__(
        self,
        *,
        ws_url: str,
        key: str,
        user_id: int,
        token: str,
        device_id: str,
        run_id: str,
        sender_index: int,
        ledger: Ledger,
        resume: bool = False,
        on_ack: AckCallback | None = None,
    ) -> None:
        self.ws_url = ws_url
        self.key = key
        self.user_id = user_id
        self.token = token
        self.device_id = device_id
        self.run_id = run_id
        self.sender_index = sender_index
        self.ledger = ledger
        self.resume = resume
        self.on_ack = on_ack
        self.stats = DeviceStats()
        # Highest seq this device has per conversation (delivered or acked): resume point.
        self.cursors: dict[int, int] = {}
        self.in_flight = 0
        self._pending: dict[str, _Pending] = {}
        self._by_request: dict[int, str] = {}
        self._n = 0
        self._conn: WsConnection | None = None
        self._hello: asyncio.Future[HelloOkFrame] | None = None
        self._sync: asyncio.Future[SyncDoneFrame] | None = None
        self._pongs: dict[int, asyncio.Future[None]] = {}
        self._closing = False
        # The server asked this socket to move (a `reconnect` frame): its close is announced.
        self._asked_to_move = False
        self._reconnect_task: asyncio.Task[None] | None = None
        self._lost_ns: int | None = None

    # ---- connection --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the socket is open and authenticated."""
        hello = self._hello
        said_hello = hello is not None and hello.done() and not hello.cancelled() and (
            hello.exception() is None
        )
        return said_hello and self._conn is not None and self._conn.is_open

    async def connect(self, cursors: dict[int, int] | None = None, timeout_s: float = 15.0) -> None:
        """Open the socket and say hello; with ``cursors`` also wait for the sync to finish."""
        loop = asyncio.get_running_loop()
        self._hello = loop.create_future()
        self._sync = loop.create_future() if cursors is not None else None
        self._conn = await WsConnection.open(
            self.ws_url, on_text=self._on_text, on_close=self._on_close, timeout_s=timeout_s
        )
        hello = HelloFrame(token=self.token, device_id=self.device_id, cursors=cursors)
        self._conn.send_text(dump_frame(hello))
        try:
            async with asyncio.timeout(timeout_s):
                await self._hello
                if self._sync is not None:
                    await self._sync
        except TimeoutError:
            self._conn.abort()
            raise WarblerError(
                ErrorCode.UNAVAILABLE, f"device {self.key}: no hello_ok/sync_done in {timeout_s}s"
            ) from None

    async def wait_synced(self) -> SyncDoneFrame:
        """The sync_done of the last connect with cursors."""
        if self._sync is None:
            raise WarblerError(ErrorCode.BAD_REQUEST, "connect was not given cursors")
        return await self._sync

    async def ping(self, timeout_s: float = 10.0) -> None:
        """Round-trip a ping frame (proves the socket is alive end to end)."""
        if self._conn is None:
            raise WarblerError(ErrorCode.UNAVAILABLE, f"device {self.key} is not connected")
        self._n += 1
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pongs[self._n] = waiter
        self._conn.send_text(dump_frame(PingFrame(id=self._n)))
        async with asyncio.timeout(timeout_s):
            await waiter

    def request_sync(self, cursors: dict[int, int], request_id: str = "sync") -> None:
        """Send a `sync` frame (the server replays what follows the cursors, then sync_done)."""
        if self._conn is None:
            raise WarblerError(ErrorCode.UNAVAILABLE, f"device {self.key} is not connected")
        self._sync = asyncio.get_running_loop().create_future()
        self._conn.send_text(dump_frame(SyncFrame(id=request_id, cursors=cursors)))

    async def close(self) -> None:
        """Close for good (no reconnect)."""
        self._closing = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect_task
        if self._conn is not None:
            self._conn.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._conn.closed
            self._conn.abort()

    def _on_close(self, code: int | None) -> None:
        for fut in (self._hello, self._sync):
            if fut is not None and not fut.done():
                fut.set_exception(
                    WarblerError(ErrorCode.UNAVAILABLE, f"socket closed (code {code})")
                )
        if self._closing:
            return
        # Counted apart: an announced move is the protocol working, a bare drop is not.
        self.ledger.record_error(
            "reconnect_requested" if self._asked_to_move else f"socket_closed_{code}"
        )
        self._asked_to_move = False
        if self.resume and self._reconnect_task is None:
            self._lost_ns = time.time_ns()
            self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        backoff = Backoff(base_s=0.05, max_s=1.0)
        try:
            while not self._closing:
                await asyncio.sleep(backoff.next_delay())
                try:
                    await self.connect(cursors=dict(self.cursors))
                except WarblerError as exc:
                    logger.debug("device %s: reconnect failed: %s", self.key, exc)
                    continue
                break
        finally:
            self._reconnect_task = None
        if self._closing:
            return
        self.stats.reconnects += 1
        if self._lost_ns is not None:
            self.stats.outages.append((self._lost_ns, time.time_ns()))
        # The protocol's rule: resend what was not acked, with the same client_msg_id.
        for pending in list(self._pending.values()):
            self._write(pending.text)

    # ---- sending -----------------------------------------------------------------------------

    def send(
        self,
        *,
        expected: int,
        body_bytes: int,
        conversation_id: int | None = None,
        to_user_id: int | None = None,
    ) -> str:
        """Send one time-stamped message; returns its client_msg_id."""
        self._n += 1
        cmid = message_id(self.run_id, self.sender_index, self._n)
        now = time.time_ns()
        text = send_frame(
            self._n,
            cmid,
            stamp_body(now, body_bytes),
            conversation_id=conversation_id,
            to_user_id=to_user_id,
        )
        self.ledger.record_send(cmid, conversation_id, now, expected)
        self._pending[cmid] = _Pending(self._n, text)
        self._by_request[self._n] = cmid
        self.in_flight += 1
        self._write(text)
        return cmid

    def _write(self, text: str) -> None:
        # While reconnecting the frame stays pending; _reconnect resends it.
        if self._conn is not None:
            self._conn.send_text(text)

    def _settle(self, cmid: str) -> None:
        pending = self._pending.pop(cmid, None)
        if pending is None:
            return
        self._by_request.pop(pending.request_id, None)
        self.in_flight -= 1
        if self.on_ack is not None:
            self.on_ack(self)

    # ---- receiving ---------------------------------------------------------------------------

    def _on_text(self, text: str) -> None:
        self.stats.frames_in += 1
        now = time.time_ns()
        try:
            frame = parse_server_frame(text)
        except ValidationError:
            self.ledger.record_error("bad_server_frame")
            return
        if isinstance(frame, MessageFrame):
            self._bump(frame.conversation_id, frame.seq)
            if is_ours(frame.client_msg_id, self.run_id):
                stamp = read_stamp(frame.body)
                self.ledger.record_delivery(
                    self.key, frame.conversation_id, frame.seq, frame.client_msg_id,
                    stamp if stamp is not None else now, now,
                )
        elif isinstance(frame, AckFrame):
            self._bump(frame.conversation_id, frame.seq)
            self.ledger.record_ack(frame.client_msg_id, frame.conversation_id, frame.seq, now)
            self._settle(frame.client_msg_id)
        elif isinstance(frame, ErrorFrame):
            self._on_error(frame)
        elif isinstance(frame, HelloOkFrame):
            if self._hello is not None and not self._hello.done():
                self._hello.set_result(frame)
        elif isinstance(frame, SyncDoneFrame):
            for conv, seq in frame.cursors.items():
                self._bump(conv, seq)
            if self._sync is not None and not self._sync.done():
                self._sync.set_result(frame)
        elif isinstance(frame, PongFrame):
            waiter = self._pongs.pop(frame.id, None) if isinstance(frame.id, int) else None
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif isinstance(frame, ReconnectFrame) and self.resume and self._conn is not None:
            self._asked_to_move = True
            self._conn.close(1000)  # the server drains this replica: move now

    def _bump(self, conversation_id: int, seq: int) -> None:
        if seq > self.cursors.get(conversation_id, 0):
            self.cursors[conversation_id] = seq

    def _on_error(self, frame: ErrorFrame) -> None:
        self.ledger.record_error(frame.code.value)
        cmid = self._by_request.get(frame.id) if isinstance(frame.id, int) else None
        if cmid is None:
            return
        if frame.code in (ErrorCode.RATE_LIMITED, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL):
            # Retryable by the protocol: resend the same message after the advised delay.
            delay_ms = (frame.details or {}).get("retry_after_ms", 50)
            pending = self._pending.get(cmid)
            if pending is not None:
                delay_s = float(delay_ms) / 1000 if isinstance(delay_ms, int | float) else 0.05
                asyncio.get_running_loop().call_later(delay_s, self._write, pending.text)
            return
        self._settle(cmid)  # a final refusal: the message stays unacked in the ledger
