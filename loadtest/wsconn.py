"""A lean WebSocket client for load generation: websockets' sans-I/O protocol on an asyncio
``Protocol``.

The load generator shares two cores with the server it measures, so its cost per frame must be
small. websockets' high-level client runs a reader task and queues every frame for ``recv()``;
here a frame goes from ``data_received`` straight to a callback, with no task, queue or future
per frame. Connections are plain ``ws://`` to 127.0.0.1 (the benchmarks never leave the host).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from warbler.errors import ErrorCode, WarblerError

logger = logging.getLogger(__name__)

TextHandler = Callable[[str], None]
CloseHandler = Callable[[int | None], None]

# Frames of the Warbler protocol are at most 64 KiB; a sync page may batch several.
_MAX_MESSAGE = 4 * 1024 * 1024


class WsConnection(asyncio.Protocol):
    """One client WebSocket. Text frames go to ``on_text``; the close code to ``on_close``.

    Example::

        conn = await WsConnection.open("ws://127.0.0.1:8000/v1/ws", on_text=print)
        conn.send_text('{"type": "ping", "id": 1}')
        conn.close()
    """

    def __init__(self, url: str, on_text: TextHandler, on_close: CloseHandler | None) -> None:
        self._proto = ClientProtocol(parse_uri(url), max_size=_MAX_MESSAGE)
        self._on_text = on_text
        self._on_close = on_close
        self._transport: asyncio.Transport | None = None
        self._fragments: list[bytes] = []
        self._closed_reported = False
        loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[int | None] = loop.create_future()
        # open() may have given up (timeout) before the handshake failed: mark it retrieved.
        self.handshake.add_done_callback(lambda f: f.cancelled() or f.exception())

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        on_text: TextHandler,
        on_close: CloseHandler | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float = 10.0,
    ) -> WsConnection:
        """Connect and complete the opening handshake; WarblerError(UNAVAILABLE) if it fails."""
        parts = urlsplit(url)
        if parts.scheme != "ws" or parts.hostname is None:
            raise WarblerError(ErrorCode.BAD_REQUEST, f"need a ws:// URL, got {url!r}")
        loop = asyncio.get_running_loop()
        conn = cls(url, on_text, on_close)
        request = conn._proto.connect()
        for name, value in (headers or {}).items():
            request.headers[name] = value
        conn._proto.send_request(request)
        try:
            async with asyncio.timeout(timeout_s):
                await loop.create_connection(lambda: conn, parts.hostname, parts.port or 80)
                await conn.handshake
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            conn.abort()
            raise WarblerError(
                ErrorCode.UNAVAILABLE, f"WebSocket connect to {url} failed: {exc!r}"
            ) from exc
        return conn

    # ---- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but provide its methods.
        self._transport = cast(asyncio.Transport, transport)
        self._flush()

    def data_received(self, data: bytes) -> None:
        self._proto.receive_data(data)
        self._flush()
        for event in self._proto.events_received():
            if isinstance(event, Frame):
                self._on_frame(event)
            elif isinstance(event, Response):
                self._on_response()

    def eof_received(self) -> bool | None:
        self._proto.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self.handshake.done():
            reason = exc or ConnectionError("connection closed during the handshake")
            self.handshake.set_exception(reason)
        self._report_close()

    # ---- frames ------------------------------------------------------------------------------

    def _on_response(self) -> None:
        if self.handshake.done():
            return
        if self._proto.handshake_exc is not None:
            self.handshake.set_exception(self._proto.handshake_exc)
        else:
            self.handshake.set_result(None)

    def _on_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.TEXT or frame.opcode is Opcode.CONT:
            if frame.fin and not self._fragments:
                data = frame.data
                self._on_text(data.decode() if isinstance(data, bytes) else bytes(data).decode())
                return
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                text = b"".join(self._fragments).decode()
                self._fragments.clear()
                self._on_text(text)
        elif frame.opcode is Opcode.CLOSE:
            self._report_close()
        # Pings are answered by the protocol itself (in _flush); binary frames are not ours.

    def _flush(self) -> None:
        transport = self._transport
        if transport is None:
            return
        for chunk in self._proto.data_to_send():
            if chunk:
                transport.write(chunk)
            else:  # SEND_EOF: the closing handshake is done on our side
                transport.close()
                return

    def _report_close(self) -> None:
        if self._closed_reported:
            return
        self._closed_reported = True
        code = self._proto.close_code
        if not self.closed.done():
            self.closed.set_result(code)
        if self._on_close is not None:
            self._on_close(code)

    # ---- public ------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """True while frames can be sent."""
        return self._transport is not None and self._proto.state is State.OPEN

    def write_buffer_size(self) -> int:
        """Bytes queued in the transport and not yet written to the socket."""
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def send_text(self, text: str) -> bool:
        """Queue one text frame; False when the socket is no longer open."""
        if not self.is_open:
            return False
        self._proto.send_text(text.encode())
        self._flush()
        return True

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake (the server's answer closes the transport)."""
        if self.is_open:
            self._proto.send_close(code)
            self._flush()
        elif self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the TCP connection with no close frame (like a crashed client)."""
        if self._transport is not None:
            self._transport.abort()
