"""`WarblerClient`: the async Python SDK of Warbler."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from pydantic import JsonValue

from client.backoff import Backoff
from client.connection import Connection, Hooks, ResyncNeeded
from client.events import ConnectionEvent, Event
from client.rest import RestClient, build
from client.sequencer import Sequencer
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import (
    SEARCH_LIMIT_DEFAULT,
    SEARCH_LIMIT_MAX,
    AckFrame,
    ConversationEventFrame,
    ConversationPublic,
    ConversationSummaryPublic,
    ErrorFrame,
    HelloOkFrame,
    LimitsPublic,
    MessageDeltaFrame,
    MessageFrame,
    MessagePagePublic,
    MessagePublic,
    PresenceFrame,
    PresencePublic,
    ReceiptFrame,
    ReceiptPublic,
    Role,
    SearchHitPublic,
    SearchPagePublic,
    SendFrame,
    SendKind,
    ServerFrame,
    SyncDoneFrame,
    TypingEventFrame,
    TypingFrame,
    UserPublic,
    body_size,
    dump_frame,
)

logger = logging.getLogger(__name__)

# Error codes on a send that the protocol says are safe to retry with the same client_msg_id.
_RETRYABLE = {ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL, ErrorCode.STALE_EPOCH}
# Over the rate limit, a send waits its turn (the server says how long) within its timeout.
_THROTTLED = ErrorCode.RATE_LIMITED
_GAP_PAGE = 500


@dataclass
class _PendingSend:
    frame: SendFrame
    future: asyncio.Future[MessageFrame]
    backoff: Backoff = field(default_factory=lambda: Backoff(base_s=0.1, max_s=5.0))


def _retry_after_s(error: WarblerError) -> float:
    """How long a RATE_LIMITED answer asks to wait (1 s if it does not say)."""
    retry_after = error.details.get("retry_after_ms")
    return retry_after / 1000.0 if isinstance(retry_after, int | float) else 1.0


def _as_frame(message: MessagePublic) -> MessageFrame:
    if isinstance(message, MessageFrame):
        return message
    return MessageFrame.model_validate(message.model_dump())


class WarblerClient:
    """An async Warbler client: account, conversations, and a live, resumable message stream.

    The client keeps one WebSocket open and reopens it by itself (exponential backoff with
    jitter; at once when a replica drains). Each new socket resumes from the client's cursors
    (the last seq it delivered per conversation) and the client drops what it already delivered
    and fills any gap from history, so ``events()`` yields every message exactly once, in seq
    order per conversation, across reconnects and dead gateway replicas. Sends are retried with
    the same ``client_msg_id`` until acked, so each is stored once.

    Conversations the client knew when it first connected are streamed "from now" (unless
    ``cursors`` were given, e.g. saved from ``client.cursors`` last time); conversations the user
    joins later are streamed from their first message.

    Example::

        async with WarblerClient("http://127.0.0.1:8000") as client:
            await client.login("alice", "correct horse")
            await client.connect()
            sent = await client.send("hi Bob", to_user="bob")
            print("stored as seq", sent.seq, "in conversation", sent.conversation_id)
            async for event in client.events():
                if isinstance(event, MessageFrame) and event.sender_id != client.user_id:
                    print(event.sender_id, event.body)
                    await client.mark_read(event.conversation_id, event.seq)
    """

    def __init__(
        self,
        base_url: str,
        *,
        device_id: str | None = None,
        cursors: Mapping[int, int] | None = None,
        send_timeout_s: float = 30.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.rest = RestClient(base_url)
        self.device_id = device_id or f"py-{uuid.uuid4().hex[:12]}"
        self.send_timeout_s = send_timeout_s
        self.limits: LimitsPublic | None = None
        self._sequencer = Sequencer(cursors)
        self._seed_from_server = cursors is None
        self._pending: dict[str, _PendingSend] = {}
        self._events: asyncio.Queue[Event | BaseException | None] = asyncio.Queue()
        self._retry_tasks: set[asyncio.Task[None]] = set()
        self._connection = Connection(
            self.rest,
            Hooks(
                cursors=self._sequencer.snapshot,
                on_open=self._on_open,
                on_frame=self._on_frame,
                on_close=self._on_close,
                on_fatal=self._on_fatal,
            ),
            device_id=self.device_id,
            backoff=backoff,
        )
        self._closed = False

    # ---- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> WarblerClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def user(self) -> UserPublic:
        """The logged-in user."""
        if self.rest.tokens is None:
            raise WarblerError(ErrorCode.UNAUTHENTICATED, "log in or register first")
        return self.rest.tokens.user

    @property
    def user_id(self) -> int:
        """The logged-in user's id."""
        return self.user.id

    @property
    def cursors(self) -> dict[int, int]:
        """The last seq delivered per conversation: save it to resume a later session."""
        return self._sequencer.snapshot()

    @property
    def connected(self) -> bool:
        """True while a socket is up and authenticated."""
        return self._connection.is_open

    @property
    def reconnects(self) -> int:
        """How many times a socket was reopened after the first."""
        return max(0, self._connection.opens - 1)

    async def register(
        self, username: str, password: str, display_name: str | None = None
    ) -> UserPublic:
        """Create an account and log in to it.

        Example::

            user = await client.register("alice", "correct horse", "Alice")
        """
        await self.rest.register(username, password, display_name)
        return await self.login(username, password)

    async def login(self, username: str, password: str) -> UserPublic:
        """Log in; tokens are refreshed automatically from then on."""
        tokens = await self.rest.login(username, password)
        return tokens.user

    async def logout(self, *, all_devices: bool = False) -> None:
        """Revoke the session (this device's, or every device's) and close the client."""
        await self._connection.stop()
        try:
            await self.rest.logout(all_devices=all_devices)
        finally:
            await self.close()

    async def connect(self, timeout_s: float | None = 30.0) -> None:
        """Open the WebSocket (and keep it open) and wait until it is authenticated.

        On the first call without saved cursors, the user's conversations are streamed from
        their current last message on: fetch older messages with ``history``.
        """
        await self._start()
        await self._connection.wait_open(timeout_s)

    async def _start(self) -> None:
        if self._closed:
            raise WarblerError(ErrorCode.UNAVAILABLE, "the client is closed")
        if self._seed_from_server:
            for conv in await self.rest.list_conversations():
                self._sequencer.seed(conv.id, conv.last_seq)
            self._seed_from_server = False
        self._connection.start()

    async def close(self) -> None:
        """Close the socket, fail unacked sends, end ``events()``, close HTTP connections."""
        if self._closed:
            return
        self._closed = True
        await self._connection.stop()
        for task in list(self._retry_tasks):
            task.cancel()
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(
                    WarblerError(ErrorCode.UNAVAILABLE, "the client was closed before the ack")
                )
        self._pending.clear()
        self._events.put_nowait(None)
        await self.rest.aclose()

    async def reconnect(self) -> None:
        """Drop the current socket; the client opens a new one and resumes (for tests, UIs)."""
        await self._connection.drop()

    # ---- the stream -------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """Every event, in order, until ``close()``; raises if the session cannot go on.

        Messages come exactly once and in seq order per conversation. Consume it from one
        task; events wait in memory until consumed.

        Example::

            async for event in client.events():
                match event:
                    case MessageFrame(conversation_id=c, seq=s, body=body):
                        print(c, s, body)
                    case ReceiptFrame(user_id=u, read_seq=r):
                        print(u, "read up to", r)
        """
        while True:
            item = await self._events.get()
            if item is None:
                self._events.put_nowait(None)  # later calls end too
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def next_event(self, timeout_s: float | None = None) -> Event:
        """The next event (raises TimeoutError after ``timeout_s``)."""
        async with asyncio.timeout(timeout_s):
            item = await self._events.get()
        if item is None:
            self._events.put_nowait(None)
            raise WarblerError(ErrorCode.UNAVAILABLE, "the client is closed")
        if isinstance(item, BaseException):
            raise item
        return item

    async def _on_open(self, ok: HelloOkFrame) -> None:
        self.limits = ok.limits
        resumed = self._connection.opens > 1
        self._events.put_nowait(ConnectionEvent("connected", resumed=resumed))
        # Unacked sends go out again with the same client_msg_id: stored once either way.
        for pending in list(self._pending.values()):
            await self._connection.send_text(dump_frame(pending.frame))

    async def _on_close(self, reason: str) -> None:
        self._events.put_nowait(ConnectionEvent("disconnected", reason=reason))

    async def _on_fatal(self, error: WarblerError) -> None:
        # No socket will come back: unacked sends fail now, and events() raises the cause.
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        self._pending.clear()
        self._events.put_nowait(error)

    async def _on_frame(self, frame: ServerFrame | MessageDeltaFrame) -> None:
        if isinstance(frame, MessageFrame):
            await self._deliver(frame)
        elif isinstance(frame, AckFrame):
            await self._on_ack(frame)
        elif isinstance(frame, ErrorFrame):
            self._on_error(frame)
        elif isinstance(frame, ConversationEventFrame):
            await self._on_conversation(frame)
        elif isinstance(frame, ReceiptFrame | TypingEventFrame | PresenceFrame | MessageDeltaFrame):
            self._events.put_nowait(frame)
        elif isinstance(frame, SyncDoneFrame):
            self._events.put_nowait(ConnectionEvent("synced"))

    async def _deliver(self, message: MessageFrame) -> None:
        try:
            out = await self._sequencer.admit(message, self._fetch_range)
        except WarblerError as exc:
            # The cursor did not move: a new socket resyncs from it, so nothing is skipped.
            raise ResyncNeeded(exc.message) from exc
        for m in out:
            self._events.put_nowait(m)

    async def _fetch_range(
        self, conversation_id: int, after: int, until: int
    ) -> list[MessageFrame]:
        out: list[MessageFrame] = []
        cursor = after
        while cursor < until:
            page = await self.rest.page_messages(
                conversation_id, after_seq=cursor, limit=min(_GAP_PAGE, until - cursor)
            )
            out += [_as_frame(m) for m in page.messages if m.seq <= until]
            if not page.messages or not page.has_more:
                break
            cursor = page.messages[-1].seq
        return out

    async def _on_ack(self, ack: AckFrame) -> None:
        key = str(ack.id) if ack.id is not None else ack.client_msg_id
        pending = self._pending.pop(key, None)
        if pending is None:
            return  # a late ack of a send that timed out: sync or a gap fill brings the message
        sent = pending.frame
        message = MessageFrame(
            conversation_id=ack.conversation_id,
            seq=ack.seq,
            sender_id=self.user_id,
            kind=sent.kind,
            body=sent.body,
            created_at=ack.created_at,
            client_msg_id=ack.client_msg_id,
        )
        # Resolve first: the ack means durable, whatever happens to the stream next.
        if not pending.future.done():
            pending.future.set_result(message)
        await self._deliver(message)

    def _on_error(self, frame: ErrorFrame) -> None:
        pending = self._pending.get(str(frame.id)) if frame.id is not None else None
        if pending is None:
            logger.warning("server error frame: %s %s", frame.code, frame.message)
            return
        if frame.code in _RETRYABLE or frame.code is _THROTTLED:
            delay = pending.backoff.next_delay()
            retry_after = (frame.details or {}).get("retry_after_ms")
            if frame.code is _THROTTLED and isinstance(retry_after, int | float):
                delay = max(delay, retry_after / 1000.0)
            logger.info("send %s failed (%s); retrying in %.2fs", frame.id, frame.code, delay)
            task = asyncio.create_task(self._resend_later(pending, delay))
            self._retry_tasks.add(task)
            task.add_done_callback(self._retry_tasks.discard)
            return
        del self._pending[str(frame.id)]
        if not pending.future.done():
            pending.future.set_exception(
                WarblerError(frame.code, frame.message, details=frame.details)
            )

    async def _resend_later(self, pending: _PendingSend, delay: float) -> None:
        await asyncio.sleep(delay)
        if pending.frame.client_msg_id in self._pending:
            # Not sent now means no socket: on_open resends it.
            await self._connection.send_text(dump_frame(pending.frame))

    async def _on_conversation(self, frame: ConversationEventFrame) -> None:
        self._events.put_nowait(frame)
        if frame.event != "added" or self._sequencer.known(frame.conversation_id):
            return
        # New to this client: deliver what it already holds (its creation, earlier messages).
        last = frame.conversation.last_seq if frame.conversation is not None else None
        if last is None:
            last = (await self.rest.get_conversation(frame.conversation_id)).last_seq
        backlog = await self._fetch_range(frame.conversation_id, 0, last)
        for m in self._sequencer.admit_backlog(frame.conversation_id, backlog):
            self._events.put_nowait(m)

    # ---- sending ----------------------------------------------------------------------------

    async def send(
        self,
        body: JsonValue,
        *,
        conversation_id: int | None = None,
        to_user: int | str | None = None,
        kind: SendKind = "text",
        client_msg_id: str | None = None,
        timeout_s: float | None = None,
    ) -> MessageFrame:
        """Send a message and wait for its ack; returns the stored message (with its seq).

        Give ``conversation_id``, or ``to_user`` (a user id or username) for the direct
        conversation with them (opened on first send). The send survives reconnects: it is
        resent with the same ``client_msg_id`` until acked. If no ack comes within
        ``timeout_s`` (default ``send_timeout_s``), raises ``WarblerError(UNAVAILABLE)`` whose
        ``details["client_msg_id"]`` can be passed back to retry without a duplicate.

        Example::

            msg = await client.send("hello", conversation_id=12)
            msg = await client.send({"sticker": "wave"}, to_user="bob", kind="json")
        """
        await self._start()
        if self._connection.fatal is not None:
            raise self._connection.fatal
        to_user_id = await self.resolve_user(to_user) if to_user is not None else None
        client_msg_id = client_msg_id or uuid.uuid4().hex
        frame = build(
            SendFrame,
            id=client_msg_id,
            conversation_id=conversation_id,
            to_user_id=to_user_id,
            client_msg_id=client_msg_id,
            kind=kind,
            body=body,
        )
        if self.limits is not None and body_size(body) > self.limits.max_body_bytes:
            raise WarblerError(
                ErrorCode.TOO_LARGE, f"body exceeds {self.limits.max_body_bytes} bytes"
            )
        if client_msg_id in self._pending:
            raise WarblerError(ErrorCode.CONFLICT, f"{client_msg_id} is already being sent")
        future: asyncio.Future[MessageFrame] = asyncio.get_running_loop().create_future()
        self._pending[client_msg_id] = _PendingSend(frame, future)
        await self._connection.send_text(dump_frame(frame))  # if down, on_open sends it
        timeout = self.send_timeout_s if timeout_s is None else timeout_s
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            self._pending.pop(client_msg_id, None)
            raise WarblerError(
                ErrorCode.UNAVAILABLE,
                f"no ack within {timeout}s; resend with the same client_msg_id to retry",
                details={"client_msg_id": client_msg_id},
            ) from None

    async def typing(self, conversation_id: int, active: bool = True) -> None:
        """Tell the other members this user is (or stopped) typing; dropped while offline."""
        frame = build(TypingFrame, conversation_id=conversation_id, active=active)
        await self._connection.send_text(dump_frame(frame))

    async def mark_read(self, conversation_id: int, seq: int) -> ReceiptPublic:
        """Mark everything up to ``seq`` read; the other members get a receipt."""
        return await self.rest.mark_read(conversation_id, seq)

    # ---- history and conversations ----------------------------------------------------------

    async def history(
        self,
        conversation_id: int,
        *,
        before_seq: int | None = None,
        after_seq: int | None = None,
        limit: int = 50,
    ) -> MessagePagePublic:
        """One page of a conversation's log, ascending seq.

        Neither bound: the newest page; ``before_seq``: the page just older than it (page
        backwards with ``page.messages[0].seq``); ``after_seq``: forwards.

        Example::

            page = await client.history(12, limit=20)
            while page.has_more:
                page = await client.history(12, before_seq=page.messages[0].seq, limit=20)
        """
        return await self.rest.page_messages(
            conversation_id, after_seq=after_seq, before_seq=before_seq, limit=limit
        )

    async def iter_history(
        self, conversation_id: int, *, after_seq: int = 0, page: int = 200
    ) -> AsyncIterator[MessagePublic]:
        """Every message after ``after_seq``, oldest first, paging as it goes."""
        cursor = after_seq
        while True:
            got = await self.rest.page_messages(conversation_id, after_seq=cursor, limit=page)
            for m in got.messages:
                yield m
            if not got.messages or not got.has_more:
                return
            cursor = got.messages[-1].seq

    async def search(
        self,
        query: str,
        *,
        conversation_id: int | None = None,
        limit: int = SEARCH_LIMIT_DEFAULT,
        cursor: str | None = None,
    ) -> SearchPagePublic:
        """One page of the text messages holding every word of ``query`` (whole words, any
        case), newest first, from the conversations the user is in now (only
        ``conversation_id`` if given). ``limit`` is 1-100; pass a page's ``next`` as ``cursor``
        for the page after it (``next`` is None on the last page). Each hit carries a
        ``snippet`` of its text and the ``[start, end)`` ``highlights`` of the matched words.

        Raises ``WarblerError(VALIDATION)`` for an empty or too long query, a query with no
        letter or digit, a bad ``limit`` or a cursor the server did not make, and
        ``RATE_LIMITED`` (``details["retry_after_ms"]``) when searching too fast.

        Example::

            page = await client.search("lunch friday")
            while True:
                for hit in page.hits:
                    print(hit.conversation_id, hit.seq, hit.snippet)
                if page.next is None:
                    break
                page = await client.search("lunch friday", cursor=page.next)
        """
        return await self.rest.search_messages(
            query, conversation_id=conversation_id, limit=limit, before=cursor
        )

    async def iter_search(
        self,
        query: str,
        *,
        conversation_id: int | None = None,
        page: int = SEARCH_LIMIT_MAX,
    ) -> AsyncGenerator[SearchHitPublic, None]:
        """Every hit of ``query`` (see ``search``), newest first, paging as it goes; stop
        iterating (and ``aclose()`` it) to stop fetching. Over the search rate limit it waits
        as long as the server says, then goes on (``search`` raises instead)."""
        cursor: str | None = None
        while True:
            try:
                got = await self.search(
                    query, conversation_id=conversation_id, limit=page, cursor=cursor
                )
            except WarblerError as exc:
                if exc.code is not _THROTTLED:
                    raise
                await asyncio.sleep(_retry_after_s(exc))
                continue
            for hit in got.hits:
                yield hit
            if got.next is None or not got.hits:
                return
            cursor = got.next

    async def list_conversations(self) -> list[ConversationSummaryPublic]:
        """The user's conversations, with last message and unread count."""
        return await self.rest.list_conversations()

    async def get_conversation(self, conversation_id: int) -> ConversationPublic:
        """A conversation with its members and roles."""
        return await self.rest.get_conversation(conversation_id)

    async def resolve_user(self, user: int | str) -> int:
        """A user id from an id or a username (``NOT_FOUND`` if no such user)."""
        if isinstance(user, int):
            return user
        found = await self.rest.get_user_by_username(user)
        if found is None:
            raise WarblerError(ErrorCode.NOT_FOUND, f"no user named {user!r}")
        return found.id

    async def open_direct(self, user: int | str) -> ConversationPublic:
        """Get or open the direct conversation with a user (id or username)."""
        return await self.rest.open_direct(await self.resolve_user(user))

    async def create_group(
        self, title: str, members: Sequence[int | str] = ()
    ) -> ConversationPublic:
        """Create a group with these members (ids or usernames); the caller owns it.

        Example::

            team = await client.create_group("Team", ["bob", "carol"])
        """
        ids = [await self.resolve_user(m) for m in members]
        return await self.rest.create_group(title, ids)

    async def add_members(
        self, conversation_id: int, members: Sequence[int | str]
    ) -> ConversationPublic:
        """Add users (ids or usernames) to a group."""
        ids = [await self.resolve_user(m) for m in members]
        return await self.rest.add_members(conversation_id, ids)

    async def remove_member(self, conversation_id: int, user: int | str) -> None:
        """Remove a member from a group (owner or admin)."""
        await self.rest.remove_member(conversation_id, await self.resolve_user(user))

    async def set_role(self, conversation_id: int, user: int | str, role: Role) -> None:
        """Change a member's role (owner only)."""
        await self.rest.set_role(conversation_id, await self.resolve_user(user), role)

    async def rename(self, conversation_id: int, title: str) -> ConversationPublic:
        """Rename a group."""
        return await self.rest.rename(conversation_id, title)

    async def leave(self, conversation_id: int) -> None:
        """Leave a group."""
        await self.rest.leave(conversation_id)

    async def users(self, user_ids: Sequence[int]) -> list[UserPublic]:
        """Users by id."""
        return await self.rest.list_users(list(user_ids))

    async def presence(self, user_ids: Sequence[int]) -> PresencePublic:
        """Which of these users are online now."""
        return await self.rest.presence(list(user_ids))
