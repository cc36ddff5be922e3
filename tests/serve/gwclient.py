"""A small test client of the gateway: accounts over REST, sockets over `websockets`.

Deliberately independent of the SDK (client/): these tests check the wire protocol itself.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

_ids = itertools.count(1)
TIMEOUT_S = 20.0


@dataclass
class Account:
    """A registered, logged-in user."""

    user_id: int
    username: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


async def make_account(http: httpx.AsyncClient, label: str) -> Account:
    """Register and log in a user with a unique name."""
    username = f"{label}-{uuid.uuid4().hex[:10]}"
    password = "correct horse battery"
    r = await http.post("/v1/auth/register", json={"username": username, "password": password})
    assert r.status_code == 201, r.text
    r = await http.post("/v1/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    body = r.json()
    return Account(body["user"]["id"], username, body["access_token"], body["refresh_token"])


@dataclass
class Socket:
    """One device's socket; frames that are not answers are kept in ``pushed``."""

    ws: ClientConnection
    user_id: int
    pushed: list[dict[str, Any]] = field(default_factory=list)
    _answers: dict[Any, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _new: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None

    def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                rid = frame.get("id")
                future = self._answers.pop(rid, None) if rid is not None else None
                if future is not None and not future.done():
                    future.set_result(frame)
                    if frame.get("type") in ("receipt", "presence"):
                        continue
                    if frame.get("type") not in ("sync_done",):
                        continue
                self.pushed.append(frame)
                self._new.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()
            self._new.set()

    async def request(self, frame: dict[str, Any], timeout: float = TIMEOUT_S) -> dict[str, Any]:
        """Send a frame with a fresh id and wait for the frame that answers it."""
        rid = frame.setdefault("id", f"r{next(_ids)}")
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._answers[rid] = future
        await self.ws.send(json.dumps(frame))
        return await asyncio.wait_for(future, timeout)

    async def send_message(
        self,
        body: Any,
        *,
        conversation_id: int | None = None,
        to_user_id: int | None = None,
        client_msg_id: str | None = None,
        kind: str = "text",
    ) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "type": "send",
            "client_msg_id": client_msg_id or uuid.uuid4().hex,
            "kind": kind,
            "body": body,
        }
        if conversation_id is not None:
            frame["conversation_id"] = conversation_id
        if to_user_id is not None:
            frame["to_user_id"] = to_user_id
        return await self.request(frame)

    async def wait_for(self, predicate: Any, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        """The first pushed frame matching ``predicate`` (already received or coming)."""
        deadline = asyncio.get_running_loop().time() + timeout
        seen = 0
        while True:
            for frame in self.pushed[seen:]:
                if predicate(frame):
                    return frame
            seen = len(self.pushed)
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or self.closed.is_set():
                raise TimeoutError(f"no matching frame; got {self.pushed[-5:]}")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), remaining)
            except TimeoutError:
                pass

    def messages(self, conversation_id: int) -> list[dict[str, Any]]:
        """The `message` frames received for a conversation, in arrival order."""
        return [
            f
            for f in self.pushed
            if f.get("type") == "message" and f.get("conversation_id") == conversation_id
        ]

    async def wait_messages(
        self, conversation_id: int, count: int, timeout: float = TIMEOUT_S
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` distinct seqs of the conversation arrived; returns them by seq."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            by_seq = {f["seq"]: f for f in self.messages(conversation_id)}
            if len(by_seq) >= count:
                return [by_seq[s] for s in sorted(by_seq)]
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or self.closed.is_set():
                raise TimeoutError(
                    f"{len(by_seq)} of {count} messages of conversation {conversation_id}"
                )
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), min(remaining, 1.0))
            except TimeoutError:
                pass

    async def close(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


async def connect(
    ws_url: str,
    account: Account,
    *,
    cursors: dict[int, int] | None = None,
    device_id: str | None = None,
    token_in: str = "hello",
) -> tuple[Socket, dict[str, Any]]:
    """Open a socket, say hello, and return it with the hello_ok frame."""
    headers = {}
    url = ws_url
    hello: dict[str, Any] = {"type": "hello", "protocol": 1, "id": "hello"}
    if token_in == "hello":
        hello["token"] = account.access_token
    elif token_in == "header":
        headers["Authorization"] = f"Bearer {account.access_token}"
    else:
        url = f"{ws_url}?access_token={account.access_token}"
    if cursors is not None:
        hello["cursors"] = {str(k): v for k, v in cursors.items()}
    if device_id:
        hello["device_id"] = device_id
    ws = await websockets.connect(url, additional_headers=headers, open_timeout=TIMEOUT_S)
    sock = Socket(ws, account.user_id)
    sock.start()
    ok = await sock.request(hello)
    assert ok["type"] == "hello_ok", ok
    return sock, ok


class Device:
    """A device that survives its socket: it reconnects with its cursors and resends unacked
    messages under the same client_msg_id, as a real client must."""

    def __init__(self, ws_url: str, account: Account, device_id: str) -> None:
        self.ws_url = ws_url
        self.account = account
        self.device_id = device_id
        self.sockets: list[Socket] = []
        self.reconnects = 0

    @property
    def sock(self) -> Socket:
        return self.sockets[-1]

    def seqs(self, conversation_id: int) -> list[int]:
        """Every seq received for the conversation, on any of the sockets, with repeats."""
        return [m["seq"] for s in self.sockets for m in s.messages(conversation_id)]

    def cursor(self, conversation_id: int) -> int:
        """The highest seq n such that 1..n all arrived."""
        have = set(self.seqs(conversation_id))
        n = 0
        while n + 1 in have:
            n += 1
        return n

    async def open(self, conversations: list[int]) -> None:
        """(Re)connect, resuming each conversation from its cursor."""
        delay = 0.2
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            try:
                sock, _ = await connect(
                    self.ws_url,
                    self.account,
                    device_id=self.device_id,
                    cursors={c: self.cursor(c) for c in conversations},
                )
                break
            except (OSError, websockets.WebSocketException, TimeoutError, AssertionError):
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        if self.sockets:
            self.reconnects += 1
        self.sockets.append(sock)

    async def send_reliably(
        self, body: str, conversation_id: int, conversations: list[int]
    ) -> dict[str, Any]:
        """Send until acked (reconnecting as needed) under one client_msg_id."""
        cmid = uuid.uuid4().hex
        while True:
            if self.sock.closed.is_set():
                await self.open(conversations)
            try:
                reply = await self.sock.send_message(
                    body, conversation_id=conversation_id, client_msg_id=cmid
                )
            except (TimeoutError, websockets.ConnectionClosed):
                continue
            if reply["type"] == "ack":
                return reply
            assert reply["code"] in ("unavailable", "internal_error"), reply
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        for s in self.sockets:
            await s.close()
