"""The baseline: a minimal chat relay in one process (plain uvicorn + FastAPI WebSocket).

It speaks the subset of the Warbler wire protocol the benchmarks use (register, login, groups,
direct conversations; WebSocket hello, send -> ack + message, sync, ping), with the protocol's
own models, so one load generator drives both it and Warbler. It keeps everything in memory:
no persistence, no durability, no cluster, no password hashing (a login is just a lookup). It is
the upper bound of what relaying these frames costs on this machine; every Warbler figure is also
given as a ratio to it.

Run it: ``python -m loadtest.baseline_relay --port 8100``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from warbler.config import Settings
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import (
    API_PREFIX,
    HELLO_TIMEOUT_S,
    PROBLEM_CONTENT_TYPE,
    WS_PATH,
    WS_TOKEN_QUERY,
    AckFrame,
    CloseCode,
    ConversationPublic,
    DirectCreate,
    ErrorFrame,
    GroupCreate,
    HealthPublic,
    HelloFrame,
    HelloOkFrame,
    LimitsPublic,
    MemberPublic,
    MessageFrame,
    PingFrame,
    PongFrame,
    RefreshCreate,
    SendFrame,
    SessionCreate,
    SyncDoneFrame,
    SyncFrame,
    TokenPublic,
    UserCreate,
    UserPublic,
    dump_frame,
    parse_client_frame,
)

logger = logging.getLogger(__name__)

_TOKEN_PREFIX = "relay."


@dataclass
class _User:
    id: int
    username: str
    password: str
    display_name: str
    created_at: datetime


@dataclass
class _Conversation:
    id: int
    kind: str
    title: str | None
    members: list[int]
    # Encoded `message` frames by seq - 1: sync replays them as they were sent live.
    log: list[str] = field(default_factory=list)
    # One writer at a time: seq order is also the order every socket sees.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def public(self) -> ConversationPublic:
        return ConversationPublic(
            id=self.id,
            kind="group" if self.kind == "group" else "direct",
            title=self.title,
            members=[MemberPublic(user_id=u, role="member") for u in self.members],
            last_seq=len(self.log),
        )


class RelayState:
    """Everything the relay knows, in memory."""

    def __init__(self, limits: LimitsPublic) -> None:
        self.limits = limits
        self.users: dict[int, _User] = {}
        self.by_name: dict[str, _User] = {}
        self.conversations: dict[int, _Conversation] = {}
        self.direct: dict[tuple[int, int], _Conversation] = {}
        self.user_convs: dict[int, set[int]] = {}
        self.sockets: dict[int, set[WebSocket]] = {}
        self.sent_ids: dict[tuple[int, str], tuple[int, int, datetime]] = {}
        self._ids = itertools.count(1)

    def add_user(self, body: UserCreate) -> _User:
        if body.username in self.by_name:
            raise WarblerError(ErrorCode.USERNAME_TAKEN, f"username {body.username!r} is taken")
        user = _User(
            next(self._ids),
            body.username,
            body.password,
            body.display_name or body.username,
            datetime.now(UTC),
        )
        self.users[user.id] = user
        self.by_name[user.username] = user
        return user

    def add_conversation(self, kind: str, title: str | None, members: list[int]) -> _Conversation:
        unknown = [u for u in members if u not in self.users]
        if unknown:
            raise WarblerError(ErrorCode.NOT_FOUND, f"unknown users: {unknown}")
        conv = _Conversation(next(self._ids), kind, title, list(dict.fromkeys(members)))
        self.conversations[conv.id] = conv
        for member in conv.members:
            self.user_convs.setdefault(member, set()).add(conv.id)
        return conv

    def get_direct(self, a: int, b: int) -> _Conversation:
        if a == b:
            raise WarblerError(ErrorCode.BAD_REQUEST, "a direct conversation needs two users")
        key = (min(a, b), max(a, b))
        conv = self.direct.get(key)
        if conv is None:
            conv = self.direct[key] = self.add_conversation("direct", None, [a, b])
        return conv

    def tokens(self, user: _User) -> TokenPublic:
        return TokenPublic(
            access_token=f"{_TOKEN_PREFIX}{user.id}",
            refresh_token=f"{_TOKEN_PREFIX}{user.id}",
            expires_in=24 * 3600,
            user=public_user(user),
        )

    def user_of(self, token: str | None) -> int:
        if token and token.startswith(_TOKEN_PREFIX):
            tail = token[len(_TOKEN_PREFIX) :]
            if tail.isdigit() and int(tail) in self.users:
                return int(tail)
        raise WarblerError(ErrorCode.UNAUTHENTICATED, "a valid access token is required")


def public_user(user: _User) -> UserPublic:
    """The wire form of a relay user."""
    return UserPublic(
        id=user.id, username=user.username, display_name=user.display_name,
        created_at=user.created_at,
    )


# ---- WebSocket -----------------------------------------------------------------------------------


class _Socket:
    """One relay socket after hello."""

    def __init__(self, state: RelayState, ws: WebSocket, user_id: int) -> None:
        self.state = state
        self.ws = ws
        self.user_id = user_id

    async def send_message(self, frame: SendFrame) -> None:
        state = self.state
        if frame.conversation_id is not None:
            conv = state.conversations.get(frame.conversation_id)
            if conv is None:
                raise WarblerError(ErrorCode.NOT_FOUND, "no such conversation")
        else:
            assert frame.to_user_id is not None
            if frame.to_user_id not in state.users:
                raise WarblerError(ErrorCode.NOT_FOUND, "no such user")
            conv = state.get_direct(self.user_id, frame.to_user_id)
        if self.user_id not in conv.members:
            raise WarblerError(ErrorCode.NOT_MEMBER, f"not a member of conversation {conv.id}")
        key = (self.user_id, frame.client_msg_id)
        async with conv.lock:
            earlier = state.sent_ids.get(key)
            if earlier is not None:  # idempotent resend: same seq, no new delivery
                conv_id, seq, created = earlier
                await self._ack(frame, conv_id, seq, created, duplicate=True)
                return
            created = datetime.now(UTC)
            seq = len(conv.log) + 1
            text = dump_frame(
                MessageFrame(
                    conversation_id=conv.id, seq=seq, sender_id=self.user_id, kind=frame.kind,
                    body=frame.body, created_at=created, client_msg_id=frame.client_msg_id,
                )
            )
            conv.log.append(text)
            state.sent_ids[key] = (conv.id, seq, created)
            await self._ack(frame, conv.id, seq, created, duplicate=False)
            for member in conv.members:
                for ws in list(state.sockets.get(member, ())):
                    if ws is not self.ws:
                        await _send_quietly(ws, text)

    async def _ack(
        self, frame: SendFrame, conv_id: int, seq: int, created: datetime, *, duplicate: bool
    ) -> None:
        ack = AckFrame(
            id=frame.id, conversation_id=conv_id, seq=seq, client_msg_id=frame.client_msg_id,
            created_at=created, duplicate=duplicate,
        )
        await self.ws.send_text(dump_frame(ack))

    async def sync_then_live(self, request_id: Any, cursors: dict[int, int]) -> None:
        """Replay every message after the cursors, then join live traffic with no gap."""
        state = self.state
        convs = [state.conversations[c] for c in sorted(state.user_convs.get(self.user_id, ()))]
        sent = {c.id: cursors.get(c.id, max(0, len(c.log) - state.limits.history_page_max))
                for c in convs}
        truncated = [c.id for c in convs if c.id not in cursors and sent[c.id] > 0]
        while True:
            behind = [c for c in convs if len(c.log) > sent[c.id]]
            if not behind:
                break
            for conv in behind:
                while sent[conv.id] < len(conv.log):
                    await self.ws.send_text(conv.log[sent[conv.id]])
                    sent[conv.id] += 1
        # No await since the last check: nothing can be appended before the socket is live.
        state.sockets.setdefault(self.user_id, set()).add(self.ws)
        done = SyncDoneFrame(id=request_id, cursors=sent, truncated=truncated)
        await self.ws.send_text(dump_frame(done))

    async def serve(self) -> None:
        while True:
            text = await self.ws.receive_text()
            request_id = None
            try:
                frame = parse_client_frame(text)
                request_id = frame.id
                if isinstance(frame, SendFrame):
                    await self.send_message(frame)
                elif isinstance(frame, PingFrame):
                    pong = PongFrame(id=frame.id, server_time=datetime.now(UTC))
                    await self.ws.send_text(dump_frame(pong))
                elif isinstance(frame, SyncFrame):
                    self.state.sockets.get(self.user_id, set()).discard(self.ws)
                    await self.sync_then_live(frame.id, frame.cursors)
                else:
                    raise WarblerError(
                        ErrorCode.UNSUPPORTED, f"the baseline relay does not do {frame.type!r}"
                    )
            except WarblerError as exc:
                rid = exc.details.get("request_id", request_id)
                await self.ws.send_text(dump_frame(ErrorFrame.from_error(exc, rid)))


async def _send_quietly(ws: WebSocket, text: str) -> None:
    # A receiver that went away is dropped from the fan-out, not an error for the sender.
    try:
        await ws.send_text(text)
    except (WebSocketDisconnect, RuntimeError, OSError):
        logger.debug("dropping a frame for a closed socket")


async def _handshake(state: RelayState, ws: WebSocket) -> tuple[int, HelloFrame] | None:
    try:
        async with asyncio.timeout(HELLO_TIMEOUT_S):
            text = await ws.receive_text()
    except TimeoutError:
        await ws.close(CloseCode.HELLO_TIMEOUT)
        return None
    try:
        hello = parse_client_frame(text)
    except WarblerError:
        await ws.close(CloseCode.BAD_HELLO)
        return None
    if not isinstance(hello, HelloFrame):
        await ws.close(CloseCode.BAD_HELLO)
        return None
    try:
        user_id = state.user_of(hello.token or ws.query_params.get(WS_TOKEN_QUERY))
    except WarblerError:
        await ws.close(CloseCode.UNAUTHENTICATED)
        return None
    return user_id, hello


def _state(request: Request) -> RelayState:
    state: RelayState = request.app.state.relay
    return state


def _current_user(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> int:
    token = None
    if authorization and authorization[:7].lower() == "bearer ":
        token = authorization[7:]
    return _state(request).user_of(token)


# Module level (not inside build_relay): FastAPI resolves these annotations by name.
CurrentUser = Annotated[int, Depends(_current_user)]


def build_relay(limits: LimitsPublic | None = None) -> FastAPI:
    """The relay's FastAPI app (state in memory, per app)."""
    if limits is None:
        defaults = Settings()
        limits = LimitsPublic(
            max_frame_bytes=defaults.max_frame_bytes,
            max_body_bytes=defaults.max_body_bytes,
            send_rate_per_s=defaults.send_rate_per_s,
            send_burst=defaults.send_burst,
            history_page_max=defaults.history_page_max,
        )
    state = RelayState(limits)
    app = FastAPI(title="Warbler baseline relay")
    app.state.relay = state

    @app.exception_handler(WarblerError)
    async def _warbler_error(request: Request, exc: WarblerError) -> JSONResponse:
        return JSONResponse(
            exc.to_problem(request.url.path), exc.status, media_type=PROBLEM_CONTENT_TYPE
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        error = WarblerError(ErrorCode.VALIDATION, "invalid request", details={"errors": errors})
        return JSONResponse(
            error.to_problem(request.url.path), 422, media_type=PROBLEM_CONTENT_TYPE
        )

    @app.get("/healthz")
    async def healthz() -> HealthPublic:
        return HealthPublic(status="ok")

    @app.post(f"{API_PREFIX}/auth/register", status_code=201)
    async def register(body: UserCreate) -> UserPublic:
        return public_user(state.add_user(body))

    @app.post(f"{API_PREFIX}/auth/login")
    async def login(body: SessionCreate) -> TokenPublic:
        user = state.by_name.get(body.username)
        if user is None or user.password != body.password:
            raise WarblerError(ErrorCode.UNAUTHENTICATED, "wrong username or password")
        return state.tokens(user)

    @app.post(f"{API_PREFIX}/auth/refresh")
    async def refresh(body: RefreshCreate) -> TokenPublic:
        return state.tokens(state.users[state.user_of(body.refresh_token)])

    @app.post(f"{API_PREFIX}/conversations", status_code=201)
    async def create_group(body: GroupCreate, user_id: CurrentUser) -> ConversationPublic:
        return state.add_conversation("group", body.title, [user_id, *body.member_ids]).public()

    @app.get(f"{API_PREFIX}/conversations/{{conversation_id}}")
    async def get_conversation(conversation_id: int, user_id: CurrentUser) -> ConversationPublic:
        conv = state.conversations.get(conversation_id)
        if conv is None or user_id not in conv.members:
            raise WarblerError(ErrorCode.NOT_FOUND, "no such conversation")
        return conv.public()

    @app.post(f"{API_PREFIX}/conversations/direct")
    async def open_direct(body: DirectCreate, user_id: CurrentUser) -> ConversationPublic:
        if body.user_id not in state.users:
            raise WarblerError(ErrorCode.NOT_FOUND, "no such user")
        return state.get_direct(user_id, body.user_id).public()

    @app.websocket(WS_PATH)
    async def websocket(ws: WebSocket) -> None:
        await ws.accept()
        shaken = await _handshake(state, ws)
        if shaken is None:
            return
        user_id, hello = shaken
        sock = _Socket(state, ws, user_id)
        ok = HelloOkFrame(
            user_id=user_id,
            device_id=hello.device_id or f"relay-{id(ws)}",
            limits=state.limits,
            server_time=datetime.now(UTC),
        )
        await ws.send_text(dump_frame(ok))
        try:
            if hello.cursors is not None:
                await sock.sync_then_live(None, hello.cursors)
            else:
                state.sockets.setdefault(user_id, set()).add(ws)
            await sock.serve()
        except WebSocketDisconnect:
            pass
        finally:
            state.sockets.get(user_id, set()).discard(ws)

    return app


def main(argv: list[str] | None = None) -> None:
    """Run the relay with uvicorn on 127.0.0.1."""
    import uvicorn

    from loadtest.generator import raise_fd_limit

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--ws", default="auto", help="uvicorn WebSocket implementation")
    parser.add_argument("--backlog", type=int, default=4096)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    raise_fd_limit()
    uvicorn.run(
        build_relay(),
        host=args.host,
        port=args.port,
        ws=args.ws,
        backlog=args.backlog,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
