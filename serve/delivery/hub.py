"""Per-replica delivery: one Redis pub/sub subscriber for every socket of the replica.

The hub subscribes to the channel of each conversation that some locally connected user belongs
to (reference counted by local users) and to the user channel of each local user (membership
changes). An event arrives once per replica, is decoded and encoded once, and is fanned out
in process to the sockets of the conversation's local members: no per-recipient Redis call.

Ordering and gaps: each socket tracks the highest seq it has per conversation. Pub/sub is not
durable, so a message can be missed (a dropped subscriber connection, a subscription racing a
publish); a socket that sees a seq beyond the next one gets the missing range from the log
(one read per distinct cursor, shared by all sockets at that cursor) before the new message.
If the log cannot be read, those sockets are closed (1011) so their clients resync: order is
never broken silently.

Redis death: when the subscriber's connection is lost (Redis killed or restarted), the hub
retries with a short backoff until a new subscriber holds every channel again, then reads the
tail of every local conversation from the log: what was committed meanwhile (acked, but never
published or never heard) reaches every local socket. Sockets attached while Redis is down
are served from the log at once and their channels are subscribed by that same retry.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from actors.messages import MessageEvent
from serve.convert import message_public
from serve.delivery.connection import Connection, LiveMessage
from storage import EventBus, Keys, Subscriber
from warbler import metrics
from warbler.protocol import CloseCode, ConversationEventFrame, MessageFrame, dump_frame

logger = logging.getLogger(__name__)

_EVENTS = metrics.BUS_EVENTS.child()
_DELIVERED = metrics.DELIVERIES.child()
_GAP_FILLS = metrics.GAP_FILLS.child()

ReadLog = Callable[[int, int, int | None, int | None, int], Awaitable[list[MessageEvent]]]
"""(user_id, conversation_id, after_seq, before_seq, limit) -> messages in ascending seq."""
LoadConversations = Callable[[int], Awaitable[dict[int, str]]]
"""user_id -> {conversation id: kind} of every conversation the user belongs to."""
OnReconnect = Callable[[], Coroutine[Any, Any, None]]
"""Runs after the hub got its subscriptions back (Redis returned, maybe empty)."""

# Waits between resubscribe attempts after a lost connection; the last one repeats. Capped at
# 1 s: an attempt is one connect, and delivery is late until one succeeds.
_RESUBSCRIBE_BACKOFF_S = (0.1, 0.25, 0.5, 1.0)
# Tails read at once after a resubscribe (each is one log read; the SQL pool is shared).
_TAIL_READS_AT_ONCE = 16


def history_frame(event: MessageEvent) -> str:
    """The `message` frame text of a message read from the log."""
    return dump_frame(MessageFrame(**message_public(event).model_dump()))


@dataclass
class _LocalUser:
    conns: set[Connection] = field(default_factory=set)
    convs: dict[int, str] = field(default_factory=dict)  # conversation id -> kind
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    error: BaseException | None = None
    # Membership events that arrived while the conversation list was being loaded.
    pending: list[dict[str, Any]] = field(default_factory=list)
    loading: bool = True


class DeliveryHub:
    """Routes bus events to the sockets of this replica, in order and without gaps."""

    def __init__(
        self,
        bus: EventBus,
        keys: Keys,
        *,
        read_log: ReadLog,
        load_conversations: LoadConversations,
        page_limit: int,
        on_reconnect: OnReconnect | None = None,
    ) -> None:
        self._bus = bus
        self._keys = keys
        self._read_log = read_log
        self._load_conversations = load_conversations
        self._page_limit = page_limit
        self._on_reconnect = on_reconnect
        self._users: dict[int, _LocalUser] = {}
        self._conv_users: dict[int, set[int]] = {}
        # channel name -> ("conv" | "user", id)
        self._channels: dict[str, tuple[str, int]] = {}
        self._subscriber: Subscriber | None = None
        self._task: asyncio.Task[None] | None = None
        self._sub_lock = asyncio.Lock()
        # Channels waiting for the next SUBSCRIBE, and the future that command resolves: a
        # surge of hellos sends one command per flush instead of one per channel.
        self._sub_pending: list[str] = []
        self._sub_flush: asyncio.Future[None] | None = None
        self._sub_waiting: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        # Conversations whose gap is being filled from the log, with the live messages that
        # arrived meanwhile (frame, text), delivered in order once the fill is done.
        self._filling: dict[int, list[tuple[dict[str, Any], str]]] = {}
        self.events_in = 0
        self.frames_out = 0
        # Bumped by every successful resubscribe: a catch-up that spans one re-reads its tail.
        self._generation = 0
        self.reconnects = 0
        self.lost_since: float | None = None  # loop time the connection was lost, while it is

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the subscriber and start reading."""
        self._subscriber = self._bus.subscriber()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="delivery-hub")

    async def close(self) -> None:
        """Stop reading and close the subscriber."""
        for task in [self._task, *self._tasks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._subscriber is not None:
            await self._subscriber.close()

    @property
    def connected(self) -> bool:
        """False from a lost pub/sub connection until every channel is subscribed again."""
        return self.lost_since is None and not (
            self._subscriber is not None and self._subscriber.lost
        )

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The reader task (None before start)."""
        return self._task

    @property
    def connections(self) -> list[Connection]:
        """Every socket of this replica."""
        return [c for u in self._users.values() for c in u.conns]

    def user_conversations(self, user_id: int) -> dict[int, str]:
        """The conversations (id -> kind) of a locally connected user."""
        local = self._users.get(user_id)
        return dict(local.convs) if local else {}

    def is_member(self, user_id: int, conversation_id: int) -> bool:
        """True when the locally connected user belongs to the conversation."""
        local = self._users.get(user_id)
        return local is not None and conversation_id in local.convs

    # -- sockets ----------------------------------------------------------------------------

    async def attach(self, conn: Connection) -> None:
        """Start delivering to ``conn``: subscribe its user's channels first (so nothing
        published from now on is missed), then load the user's conversations."""
        local = self._users.get(conn.user_id)
        if local is not None:
            await local.ready.wait()
            if local.error is None:
                local.conns.add(conn)
                return
        local = _LocalUser()
        self._users[conn.user_id] = local
        local.conns.add(conn)
        try:
            await self._subscribe([self._keys.user_channel(conn.user_id)], ("user", conn.user_id))
            local.convs = await self._load_conversations(conn.user_id)
            for conv in local.convs:
                self._conv_users.setdefault(conv, set()).add(conn.user_id)
            await self._subscribe_convs(local.convs)
            local.loading = False
            pending, local.pending = local.pending, []
            for event in pending:
                await self._on_membership(conn.user_id, event)
        except BaseException as exc:
            local.error = exc
            local.ready.set()
            self._users.pop(conn.user_id, None)
            await self._release_user(conn.user_id, local.convs)
            raise
        local.ready.set()

    async def detach(self, conn: Connection) -> None:
        """Stop delivering to ``conn``; unsubscribe what no local socket needs any more."""
        local = self._users.get(conn.user_id)
        if local is None or conn not in local.conns:
            return
        local.conns.discard(conn)
        if local.conns or not local.ready.is_set():
            return
        del self._users[conn.user_id]
        await self._release_user(conn.user_id, local.convs)

    async def _release_user(self, user_id: int, convs: Iterable[int]) -> None:
        drop = [self._keys.user_channel(user_id)]
        for conv in convs:
            users = self._conv_users.get(conv)
            if users is None:
                continue
            users.discard(user_id)
            if not users:
                del self._conv_users[conv]
                drop.append(self._keys.conv_channel(conv))
        await self._unsubscribe(drop)

    # -- sync -------------------------------------------------------------------------------

    async def catch_up(
        self,
        conn: Connection,
        cursors: dict[int, int],
        only: int | None = None,
        *,
        begun: bool = False,
        before_release: Callable[[dict[int, int], list[int]], None] | None = None,
    ) -> tuple[dict[int, int], list[int]]:
        """Send ``conn`` what it lacks after its cursors, then release the live messages that
        arrived meanwhile. Conversations without a cursor get their newest page. Returns the
        cursors now held and the conversations whose older messages were left out.

        ``begun``: the caller already called ``conn.begin_sync(only)`` (before attaching the
        socket, so no live message can overtake the cursors). ``before_release`` runs between
        the catch-up and the buffered live messages (to send `sync_done` there).
        """
        local = self._users.get(conn.user_id)
        convs = [only] if only is not None else list(local.convs if local else ())
        if not begun:
            conn.begin_sync(only)
        generation = self._generation
        truncated: list[int] = []
        ok = False
        try:
            for conv in convs:
                if conv in cursors:
                    conn.delivered[conv] = max(conn.delivered.get(conv, 0), cursors[conv])
            results = await asyncio.gather(
                *(self._send_log(conn, conv, cursors.get(conv)) for conv in convs),
                return_exceptions=True,
            )
            for conv, result in zip(convs, results, strict=True):
                if isinstance(result, BaseException):
                    raise result
                if result:
                    truncated.append(conv)
            ok = True
        finally:
            held = {c: conn.delivered[c] for c in convs if c in conn.delivered}
            if ok and before_release is not None:
                before_release(held, truncated)
            released = conn.end_sync(only)
        await self._offer_all(conn, released)
        if ok and generation != self._generation:
            # The hub resubscribed while this catch-up ran and its tail check skipped this
            # socket (it was syncing): what was committed in between is read here.
            for conv in convs:
                have = conn.delivered.get(conv)
                if have is not None and not conn.is_syncing(conv):
                    await self._fill_from_log(conv, have, None, [conn])
        return held, truncated

    async def _send_log(self, conn: Connection, conv: int, cursor: int | None) -> bool:
        """Send the log after ``cursor`` (or the newest page); True if that page was cut."""
        if cursor is None:
            page = await self._read_log(conn.user_id, conv, None, None, self._page_limit)
            for event in page:
                conn.send_history(
                    conv, event.seq, event.sender_id, event.client_msg_id, history_frame(event)
                )
            if not page:
                conn.delivered.setdefault(conv, 0)
            return len(page) >= self._page_limit and page[0].seq > 1
        after = cursor
        while True:
            page = await self._read_log(conn.user_id, conv, after, None, self._page_limit)
            for event in page:
                conn.send_history(
                    conv, event.seq, event.sender_id, event.client_msg_id, history_frame(event)
                )
            if len(page) < self._page_limit or conn.closed:
                return False
            after = page[-1].seq

    async def _offer_all(self, conn: Connection, messages: list[LiveMessage]) -> None:
        for msg in messages:
            gap = conn.offer(msg)
            if gap is not None:
                await self._fill_gap(msg, {gap: [conn]})

    # -- the event loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while True:
            subscriber = self._subscriber
            assert subscriber is not None
            try:
                async for channel, payload in subscriber:
                    attempt = 0
                    try:
                        await self._dispatch(channel, payload)
                    except Exception:
                        logger.exception("dropping a bad event on %s", channel)
                return
            except (RedisError, OSError) as exc:
                if self.lost_since is None:
                    self.lost_since = asyncio.get_running_loop().time()
                delay = _RESUBSCRIBE_BACKOFF_S[min(attempt, len(_RESUBSCRIBE_BACKOFF_S) - 1)]
                if attempt == 0:
                    logger.warning(
                        "event bus connection lost (%r); resubscribing in %.1fs", exc, delay
                    )
                attempt += 1
                await asyncio.sleep(delay)
                if await self._resubscribe():
                    attempt = 0

    async def _resubscribe(self) -> bool:
        """A new subscriber for every channel, then a gap check of every conversation: what
        was published while disconnected is read from the log. False if Redis is still away
        (the new subscriber is then lost too, and the reader comes back here)."""
        old = self._subscriber
        self._subscriber = self._bus.subscriber()
        if old is not None:
            try:
                await old.close()
            except (RedisError, OSError):
                pass
        try:
            async with self._sub_lock:
                await self._subscriber.subscribe(*self._channels)
        except (RedisError, OSError):
            return False
        self._generation += 1
        self.reconnects += 1
        if self.lost_since is not None:
            down_s = asyncio.get_running_loop().time() - self.lost_since
            logger.warning(
                "event bus back after %.2fs: %d channels resubscribed; reading the tails of %d "
                "conversations",
                down_s,
                len(self._channels),
                len(self._conv_users),
            )
        self.lost_since = None
        if self._on_reconnect is not None:
            self._spawn(self._on_reconnect())
        # Concurrently: this runs in the reader loop, so no live event is dispatched until every
        # tail is read. One by one, 36 conversations held every delivery for ~3 s after Redis
        # came back (chaos bench, 2026-12-03); a bounded gather reads them in a few round trips.
        # Each conversation is read once, so no two fills of one conversation overlap.
        bound = asyncio.Semaphore(_TAIL_READS_AT_ONCE)

        async def check(conv: int) -> None:
            async with bound:
                await self._check_tail(conv)

        results = await asyncio.gather(
            *(check(conv) for conv in list(self._conv_users)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, Exception):
                logger.warning("reading a tail after the resubscribe failed", exc_info=result)
        return True

    async def _check_tail(self, conv: int) -> None:
        """Deliver whatever of ``conv`` its local sockets lack (after a lost subscription)."""
        groups: dict[int, list[Connection]] = {}
        for uid in self._conv_users.get(conv, ()):
            local = self._users.get(uid)
            for conn in local.conns if local is not None else ():
                have = conn.delivered.get(conv)
                if have is not None and not conn.is_syncing(conv):
                    groups.setdefault(have, []).append(conn)
        for have, conns in groups.items():
            await self._fill_from_log(conv, have, None, conns)

    async def _dispatch(self, channel: str, payload: bytes) -> None:
        target = self._channels.get(channel)
        if target is None:
            return
        self.events_in += 1
        _EVENTS.inc()
        frame: dict[str, Any] = json.loads(payload)
        kind, ident = target
        if kind == "user":
            if frame.get("type") == "conversation":
                await self._on_membership(ident, frame)
            return
        ftype = frame.get("type")
        if ftype == "message":
            # Forwarded as published: the entity wrote the body in its wire form.
            await self._on_message(ident, frame, payload.decode())
        elif ftype in ("receipt", "typing", "presence"):
            # Receipts go to every member socket (the reader's other devices too); typing and
            # presence only to the others.
            if ftype == "receipt":
                self._broadcast_receipt(ident, frame, payload.decode())
                return
            self._broadcast(ident, payload.decode(), skip_user=frame.get("user_id"))
        elif ftype in ("conversation", "message_delta"):
            # message_delta: a bot's answer growing (ChatAI), forwarded to every member.
            self._broadcast(ident, payload.decode(), skip_user=None)

    async def _on_message(self, conv: int, frame: dict[str, Any], text: str) -> None:
        queued = self._filling.get(conv)
        if queued is not None:
            queued.append((frame, text))  # behind the fill in progress: order per conversation
            return
        gap = self._offer_live(conv, frame, text)
        if gap is not None:
            # Filled beside the reader loop: a fill reads the log through the conversation's
            # entity, which after a host failure can take seconds, and other conversations'
            # messages must not wait for it (chaos bench: 7 fills in a row held every delivery
            # of a replica for ~1.5 s after a host kill).
            self._filling[conv] = []
            self._spawn(self._fill_then_drain(conv, *gap))

    async def _fill_then_drain(
        self, conv: int, msg: LiveMessage, gaps: dict[int, list[Connection]]
    ) -> None:
        try:
            while True:
                await self._fill_gap(msg, gaps)
                queued = self._filling.get(conv) or []
                gap = None
                while queued and gap is None:
                    frame, text = queued.pop(0)
                    gap = self._offer_live(conv, frame, text)
                if gap is None:
                    return
                msg, gaps = gap
        finally:
            self._filling.pop(conv, None)

    def _offer_live(
        self, conv: int, frame: dict[str, Any], text: str
    ) -> tuple[LiveMessage, dict[int, list[Connection]]] | None:
        """Offer a live message to every local socket of ``conv``; the sockets that have a gap
        before it (grouped by the seq they have), if any."""
        users = self._conv_users.get(conv)
        if not users:
            return None
        msg = LiveMessage(
            conversation_id=conv,
            seq=int(frame["seq"]),
            sender_id=int(frame["sender_id"]),
            client_msg_id=str(frame.get("client_msg_id", "")),
            text=text,
        )
        gaps: dict[int, list[Connection]] = {}
        for uid in users:
            for conn in self._users[uid].conns:
                have = conn.offer(msg)
                if have is not None:
                    gaps.setdefault(have, []).append(conn)
        sent = sum(len(self._users[u].conns) for u in users)
        self.frames_out += sent
        _DELIVERED.inc(sent)
        metrics.observe_lag(frame.get("created_at"))
        return (msg, gaps) if gaps else None

    def _broadcast(self, conv: int, text: str, skip_user: object) -> None:
        for uid in self._conv_users.get(conv, ()):
            if uid == skip_user:
                continue
            for conn in self._users[uid].conns:
                conn.send(text)
                self.frames_out += 1
                _DELIVERED.inc()

    def _broadcast_receipt(self, conv: int, frame: dict[str, Any], text: str) -> None:
        # Not to the socket that sent the `read`: it got the receipt as its answer.
        uid, read_seq = frame.get("user_id"), frame.get("read_seq")
        for member in self._conv_users.get(conv, ()):
            for conn in self._users[member].conns:
                if isinstance(uid, int) and isinstance(read_seq, int):
                    if not conn.wants_receipt(conv, uid, read_seq):
                        continue
                conn.send(text)
                self.frames_out += 1

    async def _fill_gap(self, msg: LiveMessage, gaps: dict[int, list[Connection]]) -> None:
        for have, conns in gaps.items():
            _GAP_FILLS.inc()
            logger.info(
                "conversation %s: gap after seq %s before %s on %d sockets; reading the log",
                msg.conversation_id,
                have,
                msg.seq,
                len(conns),
            )
            if await self._fill_from_log(msg.conversation_id, have, msg.seq, conns):
                for conn in conns:
                    conn.offer(msg)

    async def _fill_from_log(
        self, conv: int, after: int, upto: int | None, conns: list[Connection]
    ) -> bool:
        """Send ``conns`` the log after ``after`` (up to ``upto``); on failure close them."""
        try:
            while upto is None or after < upto - 1:
                page = await self._read_log(conns[0].user_id, conv, after, None, self._page_limit)
                for event in page:
                    if upto is not None and event.seq >= upto:
                        break
                    text = history_frame(event)
                    for conn in conns:
                        conn.send_history(
                            conv, event.seq, event.sender_id, event.client_msg_id, text
                        )
                if len(page) < self._page_limit:
                    break
                after = page[-1].seq
            return True
        except Exception:
            logger.exception("conversation %s: cannot read the log to fill a gap", conv)
            for conn in conns:
                conn.request_close(CloseCode.INTERNAL)
            return False

    # -- membership -------------------------------------------------------------------------

    async def _on_membership(self, user_id: int, frame: dict[str, Any]) -> None:
        local = self._users.get(user_id)
        if local is None:
            return
        if local.loading:
            local.pending.append(frame)
            return
        conv = int(frame["conversation_id"])
        event = frame.get("event")
        text = dump_frame(ConversationEventFrame.model_validate(frame))
        if event == "added" and conv not in local.convs:
            # Entities announce groups with no details; the gateway's own announcement of a
            # new direct conversation carries them (kind decides presence pushes).
            details = frame.get("conversation") or {}
            local.convs[conv] = str(details.get("kind") or "group")
            users = self._conv_users.setdefault(conv, set())
            users.add(user_id)
            if len(users) == 1:
                await self._subscribe_convs([conv])
            for conn in list(local.conns):
                conn.send(text)
                # The conversation's messages so far (newest page), then its live stream.
                # Buffering starts now; the log is read in a task so the hub keeps flowing.
                conn.begin_sync(conv)
                self._spawn(self.catch_up(conn, {}, only=conv, begun=True))
        elif event == "removed" and conv in local.convs:
            del local.convs[conv]
            for conn in local.conns:
                conn.forget(conv)
                conn.send(text)
            remaining = self._conv_users.get(conv)
            if remaining is not None:
                remaining.discard(user_id)
                if not remaining:
                    del self._conv_users[conv]
                    await self._unsubscribe([self._keys.conv_channel(conv)])
        else:
            for conn in local.conns:
                conn.send(text)

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("delivery task failed", exc_info=task.exception())

    # -- subscriptions ----------------------------------------------------------------------

    async def _subscribe_convs(self, convs: Iterable[int]) -> None:
        await self._subscribe_targets(
            [(self._keys.conv_channel(conv), ("conv", conv)) for conv in convs]
        )

    async def _subscribe(self, channels: list[str], target: tuple[str, int]) -> None:
        await self._subscribe_targets([(c, target) for c in channels])

    async def _subscribe_targets(self, targets: list[tuple[str, tuple[str, int]]]) -> None:
        """Route these channels here and return once the SUBSCRIBE that carries them is sent.
        A channel another attach asked for whose command is not sent yet waits for that same
        command, so nobody reads the log before its subscription is out."""
        new = [(c, t) for c, t in targets if c not in self._channels]
        for c, t in new:
            self._channels[c] = t
        if self._subscriber is None:
            return
        if new:
            flush = self._sub_flush
            if flush is None:
                flush = self._sub_flush = asyncio.get_running_loop().create_future()
                self._spawn(self._flush_subscribes(flush))
            for c, _ in new:
                self._sub_pending.append(c)
                self._sub_waiting[c] = flush
        waits = {id(f): f for c, _ in targets if (f := self._sub_waiting.get(c)) is not None}
        for f in waits.values():
            try:
                await asyncio.shield(f)
            except (RedisError, OSError) as exc:
                # Redis is away: the channels stay routed here and the resubscribe that follows
                # the lost connection subscribes them, then reads what was missed from the log.
                # So the socket is served (from the log) instead of refused.
                logger.warning("subscribe deferred until Redis is back (%r)", exc)

    async def _flush_subscribes(self, flush: asyncio.Future[None]) -> None:
        # Waits for the command in flight (the lock), then sends everything queued meanwhile.
        channels: list[str] = []
        try:
            async with self._sub_lock:
                if self._sub_flush is flush:
                    self._sub_flush = None
                channels, self._sub_pending = self._sub_pending, []
                # A channel released while it waited needs no subscription any more.
                channels = [c for c in channels if c in self._channels]
                if channels and self._subscriber is not None:
                    await self._subscriber.subscribe(*channels)
        except asyncio.CancelledError:
            flush.cancel()
            raise
        except BaseException as exc:
            flush.set_exception(exc)
            flush.exception()  # the waiters read it; an unwaited failure is not worth a log
        else:
            flush.set_result(None)
        finally:
            for c in channels:
                if self._sub_waiting.get(c) is flush:
                    del self._sub_waiting[c]

    async def _unsubscribe(self, channels: list[str]) -> None:
        gone = [c for c in channels if self._channels.pop(c, None) is not None]
        if gone and self._subscriber is not None:
            try:
                async with self._sub_lock:
                    await self._subscriber.unsubscribe(*gone)
            except (RedisError, OSError):
                logger.warning("unsubscribe failed (the resubscribe after reconnect fixes it)")
