"""The WebSocket endpoint: handshake (hello + token), then frames in, frames out.

A socket's life: accept; the first frame must be ``hello`` (within HELLO_TIMEOUT_S); the token
comes from the Authorization header, the ``access_token`` query parameter or the hello frame;
``hello_ok``; then, when the hello carried cursors, a catch-up. Every later frame is handled
in its own task (so a slow send does not hold up the socket's other requests) and answered
with the request's id; any failure is an ``error`` frame and the socket stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from serve.context import GatewayContext
from serve.delivery.connection import Connection
from serve.tokens import AccessClaims
from warbler import logs, metrics
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import (
    HELLO_TIMEOUT_S,
    PROTOCOL_VERSION,
    WS_TOKEN_QUERY,
    AckFrame,
    ClientFrame,
    CloseCode,
    ErrorFrame,
    HelloFrame,
    HelloOkFrame,
    HistoryFrame,
    HistoryPageFrame,
    LimitsPublic,
    PingFrame,
    PongFrame,
    PresenceFrame,
    PresenceQueryFrame,
    ReadFrame,
    ReceiptFrame,
    RequestId,
    SendFrame,
    SyncDoneFrame,
    SyncFrame,
    TypingFrame,
    dump_frame,
    parse_client_frame,
    safe_text,
)

logger = logging.getLogger(__name__)

# Frames a socket may have queued before it counts as too slow (it is closed and resumes).
MAX_QUEUED_FRAMES = 20_000
# Requests one socket may have in flight at once.
MAX_IN_FLIGHT = 1_000
# Socket cleanups in progress (a reference, so a cleanup outliving its request is not collected).
_CLEANUPS: set[asyncio.Task[None]] = set()


def _bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


_FRAMES_OUT_ACK = metrics.FRAMES_OUT.child("ack")
_FRAMES_OUT_ERROR = metrics.FRAMES_OUT.child("error")
_ACK_SECONDS = metrics.ACK_SECONDS.child()
_HELLO_SECONDS = metrics.HELLO_SECONDS.child()
_SOCKETS = metrics.SOCKETS.child()


def _error(exc: WarblerError, request_id: RequestId | None) -> str:
    metrics.ERRORS.child(exc.code.value).inc()
    _FRAMES_OUT_ERROR.inc()
    return dump_frame(ErrorFrame.from_error(exc, request_id))


class SocketSession:
    """One client socket, from handshake to close."""

    def __init__(self, ctx: GatewayContext, websocket: WebSocket) -> None:
        self._ctx = ctx
        self._ws = websocket
        self._conn: Connection | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._counted = False  # in the sockets gauge

    async def run(self) -> None:
        """Serve the socket until the client or the server closes it."""
        ws = self._ws
        accepted = time.perf_counter()
        await ws.accept()
        try:
            hello = await self._handshake()
        except Exception as exc:
            # Whatever goes wrong, the client gets an error frame and a close code, never a
            # socket dropped with no close frame.
            logger.exception("hello failed")
            await self._fail(exc, None, CloseCode.INTERNAL)
            return
        if hello is None:
            return
        frame, claims = hello
        conn = self._conn = Connection(
            self._send_text,
            claims.user_id,
            frame.device_id or f"d-{uuid.uuid4().hex[:12]}",
            max_queue=MAX_QUEUED_FRAMES,
        )
        # A logout closes the sockets of its session (serve.revocations).
        conn.session_id, conn.token_issued_at = claims.session_id, claims.issued_at
        writer = asyncio.get_running_loop().create_task(self._write(conn))
        closer = asyncio.get_running_loop().create_task(self._close_when_asked(conn))
        try:
            if frame.cursors is not None:
                # Buffer live traffic from the moment of subscription, so no live message can
                # overtake the catch-up.
                conn.begin_sync()
            try:
                await self._ctx.hub.attach(conn)
            except Exception as exc:
                logger.exception("cannot attach a socket of user %s", claims.user_id)
                await self._fail(exc, frame.id, CloseCode.INTERNAL)
                return
            conn.send(dump_frame(self._hello_ok(frame, conn)))
            metrics.FRAMES_OUT.child("hello_ok").inc()
            _HELLO_SECONDS.observe(time.perf_counter() - accepted)
            _SOCKETS.inc()
            self._counted = True
            if frame.cursors is not None:
                self._spawn(self._sync(frame.id, frame.cursors, begun=True))
            self._spawn(self._came_online(conn))
            await self._read_loop(conn)
        finally:
            # Serve cancels this request's task when it sees the client leave, which can land
            # while the cleanup below awaits: a cancelled cleanup skipped DisconnectDevice and
            # left the device in its session (measured: every surge socket, closed normally,
            # stayed registered). So the cleanup runs as a task of its own.
            cleanup = asyncio.get_running_loop().create_task(self._cleanup(conn, writer, closer))
            _CLEANUPS.add(cleanup)
            cleanup.add_done_callback(_CLEANUPS.discard)
            await asyncio.shield(cleanup)

    async def _cleanup(
        self, conn: Connection, writer: asyncio.Task[None], closer: asyncio.Task[None]
    ) -> None:
        for task in self._tasks:
            task.cancel()
        closer.cancel()
        conn.stop()
        writer.cancel()
        # Read before detaching: the hub forgets a user whose last local socket left.
        directs = self._direct_conversations(conn.user_id)
        await self._ctx.hub.detach(conn)
        await asyncio.gather(writer, closer, *self._tasks, return_exceptions=True)
        await self._went_offline(conn, directs)
        if self._counted:
            _SOCKETS.dec()

    # -- handshake ----------------------------------------------------------------------------

    async def _handshake(self) -> tuple[HelloFrame, AccessClaims] | None:
        try:
            text = await asyncio.wait_for(self._receive_text(), HELLO_TIMEOUT_S)
        except TimeoutError:
            await self._close(CloseCode.HELLO_TIMEOUT, "no hello")
            return None
        except WebSocketDisconnect:
            return None
        if text is None:
            return None
        try:
            frame = parse_client_frame(text)
        except WarblerError as exc:
            await self._fail(exc, exc.details.get("request_id"), CloseCode.BAD_HELLO)
            return None
        if not isinstance(frame, HelloFrame):
            not_hello = WarblerError(ErrorCode.BAD_REQUEST, "the first frame must be hello")
            await self._fail(not_hello, frame.id, CloseCode.BAD_HELLO)
            return None
        if frame.protocol != PROTOCOL_VERSION:
            unsupported = WarblerError(
                ErrorCode.UNSUPPORTED,
                f"protocol {frame.protocol} is not supported; this server speaks "
                f"{PROTOCOL_VERSION}",
            )
            await self._fail(unsupported, frame.id, CloseCode.UNSUPPORTED_PROTOCOL)
            return None
        # The header and the query string are only looked at when the hello has no token
        # (parsing the query string was a visible share of a hello's CPU in a surge).
        token = frame.token or _bearer(self._ws.headers.get("authorization"))
        if token is None:
            token = self._ws.query_params.get(WS_TOKEN_QUERY)
        try:
            claims = self._ctx.accounts.authenticate(token)
        except WarblerError as exc:
            await self._fail(exc, frame.id, CloseCode.UNAUTHENTICATED)
            return None
        return frame, claims

    def _hello_ok(self, frame: HelloFrame, conn: Connection) -> HelloOkFrame:
        s = self._ctx.settings
        return HelloOkFrame(
            id=frame.id,
            user_id=conn.user_id,
            device_id=conn.device_id,
            limits=LimitsPublic(
                max_frame_bytes=s.max_frame_bytes,
                max_body_bytes=s.max_body_bytes,
                send_rate_per_s=s.send_rate_per_s,
                send_burst=s.send_burst,
                history_page_max=s.history_page_max,
            ),
            server_time=datetime.now(UTC),
        )

    # -- frames in ----------------------------------------------------------------------------

    async def _read_loop(self, conn: Connection) -> None:
        limit = self._ctx.settings.max_frame_bytes
        while True:
            try:
                text = await self._receive_text()
            except WebSocketDisconnect:
                return
            if text is None:
                return
            try:
                self._on_frame(conn, text, limit)
            except Exception:
                # A frame nothing above foresaw: answer it and keep the socket.
                logger.exception("a frame of user %s failed", conn.user_id)
                conn.send(_error(WarblerError(ErrorCode.INTERNAL, "internal error"), None))

    def _on_frame(self, conn: Connection, text: str, limit: int) -> None:
        if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
            too_large = WarblerError(ErrorCode.TOO_LARGE, f"frames are limited to {limit} bytes")
            conn.send(_error(too_large, None))
            return
        try:
            frame = parse_client_frame(text)
        except WarblerError as exc:
            conn.send(_error(exc, exc.details.get("request_id")))
            return
        metrics.FRAMES_IN.child(frame.type).inc()
        if isinstance(frame, PingFrame):
            conn.send(dump_frame(PongFrame(id=frame.id, server_time=datetime.now(UTC))))
            metrics.FRAMES_OUT.child("pong").inc()
            return
        if len(self._tasks) >= MAX_IN_FLIGHT:
            busy = WarblerError(ErrorCode.RATE_LIMITED, "too many requests in flight")
            conn.send(_error(busy, frame.id))
            return
        self._spawn(self._handle(conn, frame))

    async def _handle(self, conn: Connection, frame: ClientFrame) -> None:
        # This frame's own task: the fields follow it into the entity call and its logs.
        logs.bind(request_id=frame.id, user_id=conn.user_id, device_id=conn.device_id)
        try:
            await self._dispatch(conn, frame)
        except WarblerError as exc:
            conn.send(_error(exc, frame.id))
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s frame of user %s failed", frame.type, conn.user_id)
            conn.send(_error(WarblerError(ErrorCode.INTERNAL, "internal error"), frame.id))

    async def _dispatch(self, conn: Connection, frame: ClientFrame) -> None:
        chat = self._ctx.chat
        if isinstance(frame, SendFrame):
            started = time.perf_counter()
            logs.bind(client_msg_id=frame.client_msg_id, conversation_id=frame.conversation_id)
            event = await chat.append(conn.user_id, frame, conn)
            ack = AckFrame(
                id=frame.id,
                conversation_id=event.conversation_id,
                seq=event.seq,
                client_msg_id=event.client_msg_id,
                created_at=event.created_at,
                duplicate=event.duplicate,
            )
            conn.send(dump_frame(ack))
            _FRAMES_OUT_ACK.inc()
            _ACK_SECONDS.observe(time.perf_counter() - started)
            logger.debug("acked seq %s of conversation %s", event.seq, event.conversation_id)
        elif isinstance(frame, SyncFrame):
            await self._sync(frame.id, frame.cursors, begun=False)
        elif isinstance(frame, HistoryFrame):
            page = await chat.history(
                conn.user_id,
                frame.conversation_id,
                after_seq=frame.after_seq,
                before_seq=frame.before_seq,
                limit=frame.limit,
            )
            conn.send(dump_frame(HistoryPageFrame(id=frame.id, **page.model_dump())))
        elif isinstance(frame, ReadFrame):
            # Noted before the call too: the entity's broadcast may arrive before the answer.
            conn.note_own_read(frame.conversation_id, frame.seq)
            receipt = await chat.mark_read(conn.user_id, frame.conversation_id, frame.seq)
            conn.note_own_read(frame.conversation_id, receipt.read_seq)
            conn.send(dump_frame(ReceiptFrame(id=frame.id, **receipt.model_dump())))
        elif isinstance(frame, TypingFrame):
            if not self._ctx.hub.is_member(conn.user_id, frame.conversation_id):
                raise WarblerError(
                    ErrorCode.NOT_MEMBER,
                    f"user {conn.user_id} is not a member of conversation {frame.conversation_id}",
                )
            await chat.typing(conn.user_id, frame.conversation_id, frame.active)
        elif isinstance(frame, PresenceQueryFrame):
            online = await chat.online(frame.user_ids)
            for uid in dict.fromkeys(frame.user_ids):
                conn.send(dump_frame(PresenceFrame(id=frame.id, user_id=uid, online=uid in online)))
        elif isinstance(frame, HelloFrame):
            raise WarblerError(ErrorCode.BAD_REQUEST, "this socket already said hello")

    async def _sync(
        self, request_id: RequestId | None, cursors: dict[int, int], *, begun: bool
    ) -> None:
        conn = self._conn
        assert conn is not None

        def done(held: dict[int, int], truncated: list[int]) -> None:
            frame = SyncDoneFrame(id=request_id, cursors=held, truncated=truncated)
            conn.send(dump_frame(frame))

        try:
            await self._ctx.hub.catch_up(conn, cursors, begun=begun, before_release=done)
        except WarblerError as exc:
            conn.send(_error(exc, request_id))
        except Exception:
            logger.exception("sync of user %s failed", conn.user_id)
            conn.send(_error(WarblerError(ErrorCode.UNAVAILABLE, "sync failed; retry"), request_id))

    # -- presence ---------------------------------------------------------------------------

    def _direct_conversations(self, user_id: int) -> list[int]:
        convs = self._ctx.hub.user_conversations(user_id)
        return [c for c, kind in convs.items() if kind == "direct"]

    async def _came_online(self, conn: Connection) -> None:
        chat = self._ctx.chat
        try:
            if await chat.device_connected(conn.user_id, conn.device_id, self._ctx.replica_id):
                directs = self._direct_conversations(conn.user_id)
                await chat.publish_presence(conn.user_id, True, directs)
        except Exception:
            logger.warning("presence update for user %s failed", conn.user_id, exc_info=True)

    async def _went_offline(self, conn: Connection, directs: list[int]) -> None:
        chat = self._ctx.chat
        try:
            if await chat.device_disconnected(conn.user_id, conn.device_id, self._ctx.replica_id):
                await chat.publish_presence(conn.user_id, False, directs)
        except Exception:
            logger.warning("presence update for user %s failed", conn.user_id, exc_info=True)

    # -- plumbing -----------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _receive_text(self) -> str | None:
        message = await self._ws.receive()
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        if text is not None:
            return str(text)
        data = message.get("bytes")
        return bytes(data).decode("utf-8", errors="replace") if data is not None else ""

    async def _send_text(self, text: str) -> None:
        await self._ws.send_text(text)

    async def _write(self, conn: Connection) -> None:
        try:
            await conn.run_writer()
        except Exception:
            # The socket broke under us: stop reading too.
            conn.request_close(CloseCode.INTERNAL)

    async def _close_when_asked(self, conn: Connection) -> None:
        await conn.close_event.wait()
        await self._close(conn.close_code or CloseCode.NORMAL, "")

    async def _fail(self, exc: Exception, request_id: Any, code: int) -> None:
        error = exc if isinstance(exc, WarblerError) else WarblerError(ErrorCode.INTERNAL, str(exc))
        rid = request_id if isinstance(request_id, str | int) else None
        with contextlib.suppress(Exception):
            await self._ws.send_text(_error(error, rid))
        # A close reason is at most 123 bytes of UTF-8.
        reason = safe_text(error.message).encode()[:120].decode("utf-8", "ignore")
        await self._close(code, reason)

    async def _close(self, code: int, reason: str) -> None:
        if self._ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self._ws.close(code=code, reason=reason)
