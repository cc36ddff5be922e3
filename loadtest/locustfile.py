"""Locust users that chat over Warbler's WebSocket.

Each user registers and logs in over REST (counted in locust's statistics like any HTTP call),
holds one socket (websocket-client: blocking calls that gevent, which locust runs on, turns into
cooperative ones), opens direct conversations with other users of this process, creates groups
of them, and sends at ``--send-rate`` messages per second. It reports to locust:

- ``WS send->ack``: from a send to its ack (a failure when the server answers `error`, or when no
  ack comes within ``--ack-timeout`` seconds);
- ``WS send->delivery``: from a send to its arrival at another user of this process (the send
  time travels in the message body);
- ``WS delivery lost`` / ``WS delivery duplicated`` (failures): a user checks every conversation's
  seq stream (`loadtest.accounting.StreamCheck`): a seq received twice, or a gap that stays open
  for ``--gap-grace`` seconds. A stream is checked from the first seq the user sees in it;
- ``WS reconnect``: the user reconnected as the server asked (a `reconnect` frame, sent when
  the gateway's replicas change): like a real client it says hello with its cursors, gets what
  it missed, and resends its unacked messages under the same client ids. A socket lost without
  that warning is a ``WS connection`` failure, and the user reconnects all the same.

Run headless::

    locust -f loadtest/locustfile.py --headless -u 20 -r 5 -t 30s --host http://127.0.0.1:8000

or without ``--headless`` for the web UI. Deliveries are checked between users of one locust
process; with ``--processes`` or workers, each process checks its own users.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
import uuid
from typing import Any

import gevent
import websocket
from locust import HttpUser, events, task

from loadtest.accounting import StreamCheck
from loadtest.frames import is_ours, message_id, read_stamp, send_frame, stamp_body
from warbler.protocol import (
    API_PREFIX,
    WS_PATH,
    AckFrame,
    ConversationEventFrame,
    ErrorFrame,
    GroupCreate,
    HelloFrame,
    HelloOkFrame,
    MessageFrame,
    ReconnectFrame,
    SessionCreate,
    TokenPublic,
    UserCreate,
    dump_frame,
    parse_server_frame,
)

logger = logging.getLogger(__name__)

RUN_ID = uuid.uuid4().hex[:6]
PASSWORD = "locust-password"
_numbers = itertools.count()
# Users of this process that are online now: direct peers and group members come from here.
ONLINE: dict[int, ChatUser] = {}


class ProtocolFailure(Exception):
    """A broken guarantee or an error answer, reported to locust as a failure."""


def _options(parser: Any) -> None:
    # Straight on locust's parser (not a group): its options also show in the web UI.
    parser.add_argument("--send-rate", type=float, default=1.0,
                        help="messages per second per user")
    parser.add_argument("--group-size", type=int, default=5,
                        help="members of the groups users create (0: no groups)")
    parser.add_argument("--body-bytes", type=int, default=64, help="message body size")
    parser.add_argument("--gap-grace", type=float, default=5.0,
                        help="seconds a missing seq may be late before it counts as lost")
    parser.add_argument("--ack-timeout", type=float, default=10.0,
                        help="seconds without an ack before a send fails")


# locust's EventHook.add_listener is unannotated: go through Any rather than a type: ignore.
_parser_hook: Any = events.init_command_line_parser
_parser_hook.add_listener(_options)


class ChatUser(HttpUser):
    """One chat user with one WebSocket device."""

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.send_rate: float = max(0.01, float(getattr(opts, "send_rate", 1.0)))
        self.group_size: int = int(getattr(opts, "group_size", 5))
        self.body_bytes: int = int(getattr(opts, "body_bytes", 64))
        self.ack_timeout: float = float(getattr(opts, "ack_timeout", 10.0))
        self.streams = StreamCheck(float(getattr(opts, "gap_grace", 5.0)))
        self.number = next(_numbers)
        self.pending: dict[str, float] = {}  # client_msg_id -> sent at (time.time())
        self.unacked: dict[str, str] = {}  # client_msg_id -> its send frame, to resend
        self.by_request: dict[int, str] = {}
        self.groups: set[int] = set()
        self.sent = 0
        self.next_send = time.monotonic() + random.random() / self.send_rate
        self.ws: websocket.WebSocket | None = None
        self.reader: gevent.Greenlet | None = None
        self.closing = False
        self.user_id, self.token = self._log_in()
        self._connect()
        ONLINE[self.user_id] = self
        if self.group_size > 1 and self.number % self.group_size == 0:
            self._create_group()

    def on_stop(self) -> None:
        ONLINE.pop(getattr(self, "user_id", -1), None)
        self.closing = True
        if self.ws is not None:
            self.ws.close()
        if self.reader is not None:
            self.reader.kill(block=False)

    # ---- setup ------------------------------------------------------------------------------

    def _log_in(self) -> tuple[int, str]:
        username = f"lc_{RUN_ID}_{self.number}"
        body = UserCreate(username=username, password=PASSWORD).model_dump(exclude_none=True)
        with self.client.post(f"{API_PREFIX}/auth/register", json=body,
                              name="/v1/auth/register", catch_response=True) as response:
            if response.status_code not in (200, 201, 409):
                response.failure(f"register: HTTP {response.status_code}")
        login = SessionCreate(username=username, password=PASSWORD).model_dump()
        response = self.client.post(f"{API_PREFIX}/auth/login", json=login, name="/v1/auth/login")
        response.raise_for_status()
        tokens = TokenPublic.model_validate_json(response.content)
        return tokens.user.id, tokens.access_token

    def _ws_url(self) -> str:
        base = (self.host or "").rstrip("/")
        return base.replace("https://", "wss://").replace("http://", "ws://") + WS_PATH

    def _open(self, cursors: dict[int, int] | None = None) -> websocket.WebSocket:
        ws = websocket.create_connection(self._ws_url(), timeout=15)
        hello = HelloFrame(token=self.token, device_id=f"locust-{self.number}", cursors=cursors)
        ws.send(dump_frame(hello))
        while not isinstance(parse_server_frame(ws.recv()), HelloOkFrame):
            pass  # nothing but hello_ok can come first; be lenient anyway
        ws.settimeout(None)
        return ws

    def _connect(self) -> None:
        start = time.perf_counter()
        try:
            ws = self._open()
        except Exception as exc:  # any connect failure is a locust failure, not a crash
            self._report("connect", start, exception=exc)
            raise
        self._report("connect", start)
        self.ws = ws
        self.reader = gevent.spawn(self._read_loop)

    def _reconnect(self, delay_s: float) -> None:
        """Reconnect with cursors (the server replays what this device missed), then resend
        every unacked send under its client id (the server stores each once)."""
        old, self.ws = self.ws, None  # sends made meanwhile wait in `unacked`
        if old is not None:
            try:
                old.close()
            except Exception:  # already gone
                pass
        gevent.sleep(delay_s)
        start = time.perf_counter()
        for attempt in range(10):
            if self.closing:
                return
            try:
                ws = self._open(self.streams.resume())
                break
            except Exception as exc:
                self._report("reconnect", start, exception=exc)
                gevent.sleep(min(5.0, 0.2 * 2**attempt) * random.random())
        else:
            return
        self._report("reconnect", start)
        self.ws = ws
        for frame in list(self.unacked.values()):
            ws.send(frame)

    def _create_group(self) -> None:
        peers = [u for u in ONLINE if u != self.user_id]
        members = random.sample(peers, min(len(peers), self.group_size - 1))
        if not members:
            return
        body = GroupCreate(title=f"locust {RUN_ID} {self.number}", member_ids=members)
        response = self.client.post(
            f"{API_PREFIX}/conversations", json=body.model_dump(),
            headers={"Authorization": f"Bearer {self.token}"}, name="/v1/conversations",
        )
        if response.ok:
            self.groups.add(int(response.json()["id"]))

    # ---- receiving --------------------------------------------------------------------------

    def _read_loop(self) -> None:
        while not self.closing and self.ws is not None:
            try:
                text = self.ws.recv()
            except Exception as exc:  # closed by the server or by on_stop
                if self.closing:
                    return
                self._fail("connection", ProtocolFailure(f"socket closed: {exc!r}"))
                self._reconnect(random.uniform(0.5, 2.0))
                continue
            if not text:
                continue
            frame = parse_server_frame(text)
            if isinstance(frame, ReconnectFrame):
                self._reconnect(random.uniform(0.0, frame.retry_after_ms / 1000.0))
            else:
                self._on_frame(frame, len(text))

    def _on_frame(self, frame: object, length: int) -> None:
        now = time.time()
        if isinstance(frame, MessageFrame):
            self._see(frame.conversation_id, frame.seq, now)
            stamp = read_stamp(frame.body)
            if stamp is not None and is_ours(frame.client_msg_id, RUN_ID):
                self._fire("send->delivery", (time.time_ns() - stamp) / 1e6, length)
        elif isinstance(frame, AckFrame):
            if not frame.duplicate:  # a resend's ack repeats a seq this device may have
                self._see(frame.conversation_id, frame.seq, now)
            self.unacked.pop(frame.client_msg_id, None)
            sent_at = self.pending.pop(frame.client_msg_id, None)
            if sent_at is not None:
                self._fire("send->ack", (now - sent_at) * 1000, length)
        elif isinstance(frame, ErrorFrame):
            cmid = self.by_request.pop(frame.id, None) if isinstance(frame.id, int) else None
            if cmid is not None:
                self.unacked.pop(cmid, None)
            sent_at = self.pending.pop(cmid, None) if cmid is not None else None
            name = "send->ack" if sent_at is not None else "error frame"
            self._fail(name, ProtocolFailure(f"{frame.code.value}: {frame.message}"))
        elif isinstance(frame, ConversationEventFrame):
            conv = frame.conversation
            if frame.event == "added" and conv is not None and conv.kind == "group":
                self.groups.add(frame.conversation_id)
            elif frame.event == "removed":
                self.groups.discard(frame.conversation_id)

    def _see(self, conversation_id: int, seq: int, now: float) -> None:
        if not self.streams.see(conversation_id, seq, now):
            self._fail("delivery duplicated",
                       ProtocolFailure(f"conversation {conversation_id} seq {seq} twice"))

    # ---- sending ----------------------------------------------------------------------------

    @task
    def chat(self) -> None:
        """Send the messages that are due, then check acks and seq streams."""
        wait = self.next_send - time.monotonic()
        if wait > 0:
            gevent.sleep(wait)
        self.next_send += 1.0 / self.send_rate
        self._send_one()
        self._check()

    def _send_one(self) -> None:
        peers = [u for u in ONLINE if u != self.user_id]
        target: dict[str, int] = {}
        if self.groups and (not peers or random.random() < 0.3):
            target["conversation_id"] = random.choice(sorted(self.groups))
        elif peers:
            target["to_user_id"] = random.choice(peers)
        else:
            return  # alone: nobody to talk to yet
        self.sent += 1
        cmid = message_id(RUN_ID, self.number, self.sent)
        now = time.time()
        frame = send_frame(self.sent, cmid, stamp_body(time.time_ns(), self.body_bytes), **target)
        self.pending[cmid] = now
        self.unacked[cmid] = frame
        self.by_request[self.sent] = cmid
        ws = self.ws
        if ws is None:
            return  # reconnecting: `_reconnect` sends it
        try:
            ws.send(frame)
        except Exception:  # the socket is going; the reader reconnects and resends it
            pass

    def _check(self) -> None:
        now = time.time()
        for conv, seq in self.streams.overdue(now):
            self._fail("delivery lost", ProtocolFailure(
                f"conversation {conv} seq {seq} missing for {self.streams.grace_s}s"))
        for cmid, sent_at in list(self.pending.items()):
            if now - sent_at > self.ack_timeout:
                del self.pending[cmid]
                self.unacked.pop(cmid, None)
                self._fail("send->ack", ProtocolFailure(f"no ack in {self.ack_timeout}s"))

    # ---- statistics -------------------------------------------------------------------------

    def _fire(self, name: str, response_time_ms: float, length: int) -> None:
        self.environment.events.request.fire(
            request_type="WS", name=name, response_time=response_time_ms,
            response_length=length, exception=None, context={},
        )

    def _fail(self, name: str, exc: BaseException) -> None:
        self.environment.events.request.fire(
            request_type="WS", name=name, response_time=0, response_length=0,
            exception=exc, context={},
        )

    def _report(self, name: str, start: float, exception: BaseException | None = None) -> None:
        self.environment.events.request.fire(
            request_type="WS", name=name, response_time=(time.perf_counter() - start) * 1000,
            response_length=0, exception=exception, context={},
        )
