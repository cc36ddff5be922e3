"""One logical WebSocket session that survives sockets: connect, hello, reconnect, close codes.

`Connection` keeps exactly one socket open at a time and opens the next one by itself: with
backoff and jitter after a failure, at once after a drain (`reconnect` frame, close 1012), after
refreshing the token on 4401. It stops for good on what a retry cannot fix (revoked session,
unsupported protocol, a malformed hello) and reports that error to its owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from client.backoff import Backoff
from client.rest import RestClient
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import (
    HELLO_TIMEOUT_S,
    WS_PATH,
    CloseCode,
    HelloFrame,
    HelloOkFrame,
    MessageDeltaFrame,
    ReconnectFrame,
    ServerFrame,
    dump_frame,
    parse_chat_frame,
)

logger = logging.getLogger(__name__)

# Close codes after which reconnecting cannot help: the owner must act (log in, upgrade).
_FATAL_CLOSE = {
    CloseCode.REVOKED: (ErrorCode.UNAUTHENTICATED, "the session was revoked: log in again"),
    CloseCode.BAD_HELLO: (ErrorCode.BAD_REQUEST, "the server refused our hello frame"),
    CloseCode.UNSUPPORTED_PROTOCOL: (
        ErrorCode.UNSUPPORTED,
        "the server does not speak this client's protocol version",
    ),
}


# In the `disconnected` reason when the server asked for the reconnect (a `reconnect` frame):
# "close 1000 reconnecting (reconnect requested: <the frame's reason>)".
RECONNECT_REQUESTED = "reconnect requested"


class ResyncNeeded(Exception):
    """Raised by a frame handler to drop the socket and resume from the cursors on a new one."""


@dataclass(frozen=True)
class Hooks:
    """What a Connection calls back into its owner (the WarblerClient)."""

    # The cursors to resume from, sent in hello (the server syncs after them).
    cursors: Callable[[], dict[int, int]]
    # A socket is authenticated (hello_ok): resend what was not acked, report "connected".
    on_open: Callable[[HelloOkFrame], Awaitable[None]]
    # Every later server frame, in order; may raise ResyncNeeded.
    on_frame: Callable[[ServerFrame | MessageDeltaFrame], Awaitable[None]]
    # The socket is gone (the connection goes on unless stopped).
    on_close: Callable[[str], Awaitable[None]]
    # The connection gave up for good (revoked session, refresh refused, protocol mismatch).
    on_fatal: Callable[[WarblerError], Awaitable[None]]


def ws_url(base_url: str) -> str:
    """The WebSocket URL of a gateway given its HTTP base URL."""
    base = base_url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base.removeprefix("https://") + WS_PATH
    if base.startswith("http://"):
        return "ws://" + base.removeprefix("http://") + WS_PATH
    return base + WS_PATH


class Connection:
    """Keeps a WebSocket to the gateway open until ``stop()``, resuming on every new socket.

    Example::

        conn = Connection(rest, hooks, device_id="laptop")
        conn.start()
        await conn.wait_open()          # first hello_ok (or raises the fatal error)
        await conn.send_text(dump_frame(SendFrame(...)))
        await conn.stop()
    """

    def __init__(
        self,
        rest: RestClient,
        hooks: Hooks,
        *,
        device_id: str,
        backoff: Backoff | None = None,
        open_timeout_s: float = 10.0,
    ) -> None:
        self._rest = rest
        self._hooks = hooks
        self._url = ws_url(rest.base_url)
        self.device_id = device_id
        self._backoff = backoff or Backoff(base_s=0.2, max_s=10.0)
        self._open_timeout_s = open_timeout_s
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._opened = asyncio.Event()
        self._changed = asyncio.Condition()
        self._stopping = False
        self.fatal: WarblerError | None = None
        # Counts sockets that reached hello_ok: tests and UIs use it to see reconnects.
        self.opens = 0
        # The reason of the `reconnect` frame that ended the current socket, if one did.
        self._announced: str | None = None

    @property
    def is_open(self) -> bool:
        """True while an authenticated socket is up."""
        return self._opened.is_set()

    def start(self) -> None:
        """Start the background task that keeps a socket open (not after it gave up)."""
        if self._task is None and self.fatal is None and not self._stopping:
            self._task = asyncio.create_task(self._run(), name="warbler-connection")

    async def wait_open(self, timeout_s: float | None = None) -> None:
        """Wait for an authenticated socket; raises the fatal error if the connection gave up."""
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(
                    lambda: self._opened.is_set() or self.fatal is not None or self._task is None
                )
        except TimeoutError:
            raise WarblerError(
                ErrorCode.UNAVAILABLE, f"no connection to {self._url} within {timeout_s}s"
            ) from None
        if self.fatal is not None:
            raise self.fatal
        if not self._opened.is_set():
            raise WarblerError(ErrorCode.UNAVAILABLE, "the connection is stopped")

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def send_text(self, text: str) -> bool:
        """Send one frame on the current socket; False when there is none (caller retries later)."""
        ws = self._ws
        if ws is None or not self._opened.is_set():
            return False
        try:
            await ws.send(text)
        except ConnectionClosed:
            return False
        return True

    async def drop(self) -> None:
        """Close the current socket (the connection opens a new one): for tests and resyncs."""
        ws = self._ws
        if ws is not None:
            await ws.close(code=CloseCode.NORMAL, reason="client resync")

    async def stop(self) -> None:
        """Close the socket and stop reconnecting."""
        self._stopping = True
        task, self._task = self._task, None
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while not self._stopping:
                delay = await self._one_socket()
                if self._stopping or self.fatal is not None:
                    break
                if delay is None:
                    delay = self._backoff.next_delay()
                logger.info("reconnecting to %s in %.2fs", self._url, delay)
                await asyncio.sleep(delay)
        finally:
            self._task = None
            await self._notify()
        if self.fatal is not None:
            logger.warning("connection to %s given up: %s", self._url, self.fatal.message)
            await self._hooks.on_fatal(self.fatal)

    async def _one_socket(self) -> float | None:
        """Run one socket to its end; return the delay before the next (None: use backoff)."""
        token: str | None = None
        reason = "closed"
        delay: float | None = None
        code: int | None = None
        was_open = False
        self._announced = None
        try:
            token = await self._rest.access_token()
            async with connect(
                self._url,
                open_timeout=self._open_timeout_s,
                max_size=None,
                proxy=None,
                # Protocol pings keep proxies from idling the socket out and find dead peers.
                ping_interval=20,
                ping_timeout=20,
                close_timeout=2,
            ) as ws:
                self._ws = ws
                cursors = self._hooks.cursors()
                hello = HelloFrame(token=token, device_id=self.device_id, cursors=cursors)
                await ws.send(dump_frame(hello))
                ok = await self._await_hello_ok(ws)
                self.opens += 1
                was_open = True
                self._opened.set()
                self._backoff.reset()
                await self._notify()
                await self._hooks.on_open(ok)
                delay = await self._read(ws)
            code = ws.close_code
            reason = f"close {code} {ws.close_reason or ''}".strip()
            if self._announced is not None:
                # The server said why (e.g. "draining", "rebalance"): not a failure.
                reason = f"{reason} ({RECONNECT_REQUESTED}: {self._announced})"
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            reason = f"closed: {exc}"
        except InvalidStatus as exc:
            status = exc.response.status_code
            reason = f"handshake refused: HTTP {status}"
            code = CloseCode.UNAUTHENTICATED if status == 401 else None
        except WarblerError as exc:
            reason = f"{exc.code.value}: {exc.message}"
            if exc.code in (ErrorCode.UNAUTHENTICATED, ErrorCode.TOKEN_EXPIRED):
                self.fatal = exc  # the refresh token itself was refused: log in again
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            reason = f"cannot connect: {exc!r}"
        except ResyncNeeded as exc:
            # Backoff, not at once: if the cause persists, this must not spin.
            reason = f"resync: {exc}"
        except Exception as exc:  # a bug in a handler must not end the session
            logger.exception("connection handler failed; reconnecting")
            reason = f"error: {exc!r}"
        finally:
            self._opened.clear()
            self._ws = None
        logger.info("socket to %s ended (%s)", self._url, reason)
        delay = self._after_close(code, delay)
        if code == CloseCode.UNAUTHENTICATED and token is not None and self.fatal is None:
            delay = await self._refresh_or_fail(token)
        if was_open:
            await self._hooks.on_close(reason)
        if self.fatal is not None:
            await self._notify()
        return delay

    async def _refresh_or_fail(self, token: str) -> float | None:
        try:
            await self._rest.refresh(stale=token)
        except WarblerError as exc:
            if exc.code in (ErrorCode.UNAUTHENTICATED, ErrorCode.TOKEN_EXPIRED):
                self.fatal = exc
            return None
        return 0.0

    def _after_close(self, code: int | None, drain_delay: float | None) -> float | None:
        """Apply the close-code policy; returns the delay before reconnecting."""
        if code in _FATAL_CLOSE:
            err_code, message = _FATAL_CLOSE[CloseCode(code)]
            self.fatal = WarblerError(err_code, message)
            return None
        if drain_delay is not None:
            return drain_delay  # a reconnect frame came first
        if code == CloseCode.SERVICE_RESTART:
            return random.uniform(0.0, 0.1)
        return None

    async def _await_hello_ok(self, ws: ClientConnection) -> HelloOkFrame:
        async with asyncio.timeout(HELLO_TIMEOUT_S):
            while True:
                frame = _parse(await ws.recv())
                if isinstance(frame, HelloOkFrame):
                    return frame
                logger.warning("frame before hello_ok ignored: %r", frame)

    async def _read(self, ws: ClientConnection) -> float | None:
        """Dispatch frames until the socket ends; returns a drain delay if told to reconnect."""
        async for raw in ws:
            frame = _parse(raw)
            if frame is None:
                continue
            if isinstance(frame, ReconnectFrame):
                # Spread the reconnects of every client of a draining replica over the window
                # it grants, then leave at once: the cursors make the new socket resume.
                logger.info("server asked to reconnect (%s)", frame.reason)
                self._announced = frame.reason
                await ws.close(code=CloseCode.NORMAL, reason="reconnecting")
                return random.uniform(0.0, frame.retry_after_ms / 1000.0)
            await self._hooks.on_frame(frame)
        return None


def _parse(raw: str | bytes) -> ServerFrame | MessageDeltaFrame | None:
    try:
        return parse_chat_frame(raw)
    except ValidationError as exc:
        # Forward compatibility: a newer server may send frames this client does not know.
        logger.warning("unreadable server frame skipped: %s", exc.errors()[:1])
        return None
