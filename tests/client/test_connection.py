"""Connection's reaction to what the gateway may say on a socket: a drain (`reconnect` frame),
and close codes that must stop it. The gateway does not drain on demand in a test, so a small
WebSocket server plays the server side of docs/protocol.md here; everything else about the
connection is tested against the real gateway (test_sdk.py, test_failover.py)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from client.auth import Tokens
from client.backoff import Backoff
from client.connection import Connection, Hooks
from client.rest import RestClient
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import CloseCode, HelloOkFrame, ServerFrame, UserPublic

NOW = datetime.now(UTC)
HELLO_OK = {
    "type": "hello_ok",
    "user_id": 1,
    "device_id": "d1",
    "limits": {
        "max_frame_bytes": 65536,
        "max_body_bytes": 16384,
        "send_rate_per_s": 50.0,
        "send_burst": 200,
        "history_page_max": 500,
    },
    "server_time": NOW.isoformat(),
}
Script = Callable[[ServerConnection, int], Any]


class Recorder:
    """Hooks that record what the connection reports."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed: list[str] = []
        self.fatal: list[WarblerError] = []
        self.frames: list[ServerFrame] = []

    def hooks(self, cursors: dict[int, int]) -> Hooks:
        async def on_open(ok: HelloOkFrame) -> None:
            self.opened += 1

        async def on_frame(frame: ServerFrame) -> None:
            self.frames.append(frame)

        async def on_close(reason: str) -> None:
            self.closed.append(reason)

        async def on_fatal(error: WarblerError) -> None:
            self.fatal.append(error)

        return Hooks(lambda: dict(cursors), on_open, on_frame, on_close, on_fatal)


@pytest.fixture
async def server() -> AsyncIterator[tuple[list[dict[str, Any]], Callable[[Script], str]]]:
    """A WebSocket server on a free port running a per-test script; records every hello."""
    hellos: list[dict[str, Any]] = []
    script_box: list[Script] = []
    count = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal count
        hellos.append(json.loads(await ws.recv()))
        count += 1
        await ws.send(json.dumps(HELLO_OK))
        await script_box[0](ws, count)

    async with serve(handler, "127.0.0.1", 0) as srv:
        port = next(iter(srv.sockets)).getsockname()[1]

        def start(script: Script) -> str:
            script_box.append(script)
            return f"http://127.0.0.1:{port}"

        yield hellos, start


def connection(base_url: str, recorder: Recorder, cursors: dict[int, int]) -> Connection:
    rest = RestClient(base_url)
    user = UserPublic(id=1, username="alice", display_name="Alice", created_at=NOW)
    rest.tokens = Tokens("access", "refresh", time.monotonic() + 3600, user)
    return Connection(rest, recorder.hooks(cursors), device_id="d1", backoff=Backoff(max_s=0.2))


async def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.02)


async def test_reconnect_frame_moves_to_a_new_socket_that_resumes_from_the_cursors(
    server: tuple[list[dict[str, Any]], Callable[[Script], str]],
) -> None:
    hellos, start = server

    async def script(ws: ServerConnection, n: int) -> None:
        if n == 1:
            await ws.send(json.dumps({"type": "reconnect", "retry_after_ms": 50}))
        await ws.wait_closed()

    cursors = {12: 40}
    recorder = Recorder()
    conn = connection(start(script), recorder, cursors)
    conn.start()
    await conn.wait_open(10)
    cursors[12] = 41  # delivered meanwhile: the next hello must carry it
    await eventually(lambda: recorder.opened == 2)
    await conn.stop()
    assert [h["type"] for h in hellos] == ["hello", "hello"]
    assert hellos[0]["cursors"] == {"12": 40} and hellos[1]["cursors"] == {"12": 41}
    assert hellos[0]["token"] == "access" and hellos[1]["device_id"] == "d1"
    assert "close 1000" in recorder.closed[0]
    assert recorder.fatal == [] and recorder.frames == []


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (CloseCode.REVOKED, ErrorCode.UNAUTHENTICATED),
        (CloseCode.UNSUPPORTED_PROTOCOL, ErrorCode.UNSUPPORTED),
        (CloseCode.BAD_HELLO, ErrorCode.BAD_REQUEST),
    ],
)
async def test_close_codes_a_retry_cannot_fix_stop_the_connection(
    server: tuple[list[dict[str, Any]], Callable[[Script], str]],
    code: CloseCode,
    expected: ErrorCode,
) -> None:
    hellos, start = server

    async def script(ws: ServerConnection, n: int) -> None:
        await ws.close(code=code, reason="test")

    recorder = Recorder()
    conn = connection(start(script), recorder, {})
    conn.start()
    await eventually(lambda: bool(recorder.fatal))
    await asyncio.sleep(0.5)  # long enough for several backoff rounds: none must happen
    assert len(hellos) == 1 and recorder.fatal[0].code is expected
    with pytest.raises(WarblerError) as err:
        await conn.wait_open(1)
    assert err.value.code is expected
    conn.start()  # stays stopped
    await asyncio.sleep(0.3)
    assert len(hellos) == 1
    await conn.stop()


async def test_server_errors_and_drops_are_retried_with_backoff(
    server: tuple[list[dict[str, Any]], Callable[[Script], str]],
) -> None:
    hellos, start = server

    async def script(ws: ServerConnection, n: int) -> None:
        if n == 1:
            await ws.close(code=CloseCode.INTERNAL, reason="oops")
        elif n == 2:
            ws.transport.abort()  # no close frame at all, like a crashed replica
        else:
            await ws.send(json.dumps({"type": "pong", "server_time": NOW.isoformat()}))
            await ws.wait_closed()

    recorder = Recorder()
    conn = connection(start(script), recorder, {})
    conn.start()
    await eventually(lambda: recorder.opened == 3 and len(recorder.frames) == 1)
    await conn.stop()
    assert len(hellos) == 3 and recorder.fatal == []
    assert recorder.frames[0].type == "pong"
