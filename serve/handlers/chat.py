"""Conversations and messages: every change goes to a conversation entity through the Runtime
(batched per replica by the CallCoalescer); reads of the caller's own lists come from SQL."""

from __future__ import annotations

import asyncio
import logging

from actors.messages import (
    AddMembers,
    Append,
    ConnectDevice,
    ConversationInfo,
    CreateGroup,
    DisconnectDevice,
    GetInfo,
    Leave,
    MarkRead,
    MessageEvent,
    OpenDirect,
    ReadLog,
    RemoveMember,
    Rename,
    Request,
    SetRole,
)
from actors.names import NEW_CONVERSATION_KEY, conv_key, user_key
from actors.publisher import Publisher
from actors.runtime import Runtime
from serve.batching import CallCoalescer
from serve.convert import (
    ack_public,
    conversation_public,
    message_public,
    receipt_public,
)
from serve.delivery.connection import Connection
from serve.handlers.hello import MembershipLoader
from serve.ratelimit import SendRateLimiter
from storage import ConversationStore, EventBus, Keys, Message, PresenceCache
from warbler import metrics
from warbler.config import Settings
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import (
    AckPublic,
    ConversationEventFrame,
    ConversationPublic,
    ConversationSummaryPublic,
    GroupCreate,
    MessageCreate,
    MessagePagePublic,
    ReceiptPublic,
    Role,
    body_size,
    dump_frame,
    presence_payload,
    to_entity_body,
    typing_payload,
)

logger = logging.getLogger(__name__)
_RATE_LIMITED = metrics.RATE_LIMITED.child()

_DIRECT_CACHE_MAX = 100_000


class ChatHandler:
    """What the routes and the WebSocket endpoint call for conversations and messages."""

    def __init__(
        self,
        settings: Settings,
        calls: CallCoalescer,
        runtime: Runtime,
        conversations: ConversationStore,
        presence: PresenceCache,
        bus: EventBus,
        keys: Keys,
    ) -> None:
        self._settings = settings
        self._calls = calls
        # For the rare "conv:new" factory calls (answered by a redirect the Runtime follows):
        # nothing to gain from batching them with the sends.
        self._runtime = runtime
        self._conversations = conversations
        # The store keeps its Database private; the hello's batched read needs it (see
        # serve/handlers/hello.py).
        self._memberships = MembershipLoader(conversations)
        self._presence = presence
        self._keys = keys
        self._limiter = SendRateLimiter(settings.send_rate_per_s, settings.send_burst)
        # (low user id, high user id) -> direct conversation id; never changes once known.
        self._direct: dict[tuple[int, int], int] = {}
        self._direct_pending: dict[tuple[int, int], asyncio.Future[ConversationInfo]] = {}
        # Gateway-made events (typing, presence, new direct conversations) leave in batches:
        # one pipeline per event-loop tick, however many sockets publish at once.
        self._publisher = Publisher(bus)

    # -- messages ---------------------------------------------------------------------------

    async def send(self, user_id: int, body: MessageCreate) -> AckPublic:
        """Append a message; the ack says it is durable under its seq."""
        return ack_public(await self.append(user_id, body))

    async def append(
        self, user_id: int, body: MessageCreate, conn: Connection | None = None
    ) -> MessageEvent:
        """Append a message and return the committed event (``duplicate`` for a resend).
        ``conn`` is the sending socket: it gets the ack, not an echo."""
        wait_s = self._limiter.try_take(user_id)
        if wait_s > 0:
            _RATE_LIMITED.inc()
            raise WarblerError(
                ErrorCode.RATE_LIMITED,
                "sending too fast",
                details={"retry_after_ms": int(wait_s * 1000) + 1},
            )
        size = body_size(body.body)
        if size > self._settings.max_body_bytes:
            raise WarblerError(
                ErrorCode.TOO_LARGE,
                f"body is {size} bytes; the limit is {self._settings.max_body_bytes}",
            )
        if body.conversation_id is not None:
            conversation_id = body.conversation_id
        else:
            assert body.to_user_id is not None
            conversation_id = await self._direct_conversation(user_id, body.to_user_id)
        if conn is not None:
            conn.note_own_send(body.client_msg_id)
        append = Append(
            sender_id=user_id,
            client_msg_id=body.client_msg_id,
            kind=body.kind,
            body=to_entity_body(body.kind, body.body),
        )
        return await self._calls.call(conv_key(conversation_id), append)

    async def read_log(
        self,
        user_id: int,
        conversation_id: int,
        after_seq: int | None,
        before_seq: int | None,
        limit: int,
    ) -> list[MessageEvent]:
        """A page of the log in ascending seq (NOT_MEMBER unless the user belongs)."""
        return await self._calls.call(
            conv_key(conversation_id), ReadLog(user_id, after_seq, before_seq, limit)
        )

    async def history(
        self,
        user_id: int,
        conversation_id: int,
        *,
        after_seq: int | None,
        before_seq: int | None,
        limit: int,
    ) -> MessagePagePublic:
        """One page; ``has_more`` says whether another exists in the direction asked."""
        cap = self._settings.history_page_max
        limit = max(1, min(limit, cap))
        ask = min(limit + 1, cap)
        page = await self.read_log(user_id, conversation_id, after_seq, before_seq, ask)
        has_more = len(page) > limit or (ask == limit and len(page) == limit)
        if len(page) > limit:
            page = page[:limit] if after_seq is not None else page[-limit:]
        if after_seq is None and page and page[0].seq <= 1:
            has_more = False
        return MessagePagePublic(
            conversation_id=conversation_id,
            messages=[message_public(e) for e in page],
            has_more=has_more,
        )

    async def mark_read(self, user_id: int, conversation_id: int, seq: int) -> ReceiptPublic:
        """Advance the read position; the entity publishes the receipt to the members."""
        receipt = await self._calls.call(conv_key(conversation_id), MarkRead(user_id, seq))
        return receipt_public(receipt)

    async def typing(self, user_id: int, conversation_id: int, active: bool) -> None:
        """Tell the other members' sockets (ephemeral; one publish, no storage)."""
        payload = typing_payload(conversation_id, user_id, active)
        self._publisher.publish(self._keys.conv_channel(conversation_id), payload)

    # -- conversations ----------------------------------------------------------------------

    async def _direct_conversation(self, user_id: int, peer_id: int) -> int:
        pair = (min(user_id, peer_id), max(user_id, peer_id))
        known = self._direct.get(pair)
        if known is not None:
            return known
        # Single flight: a burst of first sends to one user opens the conversation once.
        pending = self._direct_pending.get(pair)
        if pending is None:
            pending = asyncio.ensure_future(self.open_direct_info(user_id, peer_id))
            self._direct_pending[pair] = pending
            pending.add_done_callback(lambda _: self._direct_pending.pop(pair, None))
        info = await asyncio.shield(pending)
        return info.conversation_id

    async def open_direct_info(self, user_id: int, peer_id: int) -> ConversationInfo:
        """Get or create the direct conversation of two users."""
        if peer_id == user_id:
            raise WarblerError(ErrorCode.BAD_REQUEST, "a direct conversation needs another user")
        info = await self._runtime.call(NEW_CONVERSATION_KEY, OpenDirect(user_id, peer_id))
        if info.last_seq == 0:
            # A new (or still empty) direct conversation: tell both users' gateways, as
            # entities do for groups, so they subscribe to it (and catch up its first page).
            frame = ConversationEventFrame(
                event="added",
                conversation_id=info.conversation_id,
                conversation=conversation_public(info),
            )
            payload = dump_frame(frame).encode()
            for uid in (user_id, peer_id):
                self._publisher.publish(self._keys.user_channel(uid), payload)
            # Out before the first message, so gateways usually subscribe in time for it.
            await self._publisher.drain()
        if len(self._direct) >= _DIRECT_CACHE_MAX:
            self._direct.clear()
        self._direct[(min(user_id, peer_id), max(user_id, peer_id))] = info.conversation_id
        return info

    async def open_direct(self, user_id: int, peer_id: int) -> ConversationPublic:
        """The direct conversation with ``peer_id`` (created on first use)."""
        return conversation_public(await self.open_direct_info(user_id, peer_id))

    async def create_group(self, user_id: int, body: GroupCreate) -> ConversationPublic:
        """A new group owned by the caller."""
        members = tuple(dict.fromkeys(u for u in body.member_ids if u != user_id))
        event = await self._runtime.call(
            NEW_CONVERSATION_KEY, CreateGroup(user_id, body.title, members)
        )
        return await self.get_conversation(user_id, event.conversation_id)

    async def get_conversation(self, user_id: int, conversation_id: int) -> ConversationPublic:
        """Kind, title, members and last seq (members only)."""
        info = await self._calls.call(conv_key(conversation_id), GetInfo(user_id))
        return conversation_public(info)

    async def _command(self, conversation_id: int, message: Request[MessageEvent]) -> MessageEvent:
        return await self._calls.call(conv_key(conversation_id), message)

    async def rename(self, user_id: int, conversation_id: int, title: str) -> ConversationPublic:
        """Rename a group (owner/admin)."""
        await self._command(conversation_id, Rename(user_id, title))
        return await self.get_conversation(user_id, conversation_id)

    async def add_members(
        self, user_id: int, conversation_id: int, user_ids: list[int], role: Role
    ) -> ConversationPublic:
        """Add users to a group (owner/admin)."""
        if role == "owner":
            raise WarblerError(ErrorCode.BAD_REQUEST, "add members as admin or member")
        await self._command(conversation_id, AddMembers(user_id, tuple(user_ids), role))
        return await self.get_conversation(user_id, conversation_id)

    async def remove_member(self, user_id: int, conversation_id: int, member_id: int) -> None:
        """Remove a member (removing yourself is leaving)."""
        if member_id == user_id:
            await self._command(conversation_id, Leave(user_id))
        else:
            await self._command(conversation_id, RemoveMember(user_id, member_id))

    async def leave(self, user_id: int, conversation_id: int) -> None:
        """Leave a group."""
        await self._command(conversation_id, Leave(user_id))

    async def set_role(
        self, user_id: int, conversation_id: int, member_id: int, role: Role
    ) -> ConversationPublic:
        """Change a member's role (owner only)."""
        await self._command(conversation_id, SetRole(user_id, member_id, role))
        return await self.get_conversation(user_id, conversation_id)

    async def list_conversations(self, user_id: int) -> list[ConversationSummaryPublic]:
        """The caller's conversations with last message and unread count, newest first."""
        rows = await self._conversations.list_user_conversations(user_id)
        out: list[ConversationSummaryPublic] = []
        for row in rows:
            conv = row.conversation
            peer_id = None
            if conv.kind == "direct" and conv.direct_key:
                a, _, b = conv.direct_key.partition(":")
                peer_id = int(b) if int(a) == user_id else int(a)
            last = row.last_message
            out.append(
                ConversationSummaryPublic(
                    id=conv.id,
                    kind="direct" if conv.kind == "direct" else "group",
                    title=conv.title or None,
                    last_seq=row.last_seq,
                    read_seq=row.read_seq,
                    unread=row.unread,
                    peer_id=peer_id,
                    last_message=message_public(_as_event(last)) if last is not None else None,
                )
            )
        return out

    async def load_conversations(self, user_id: int) -> dict[int, str]:
        """Conversation id -> kind for every conversation of the user (for delivery); the
        loads of concurrent hellos share one query."""
        return await self._memberships.load(user_id)

    # -- presence ---------------------------------------------------------------------------

    async def online(self, user_ids: list[int]) -> set[int]:
        """Which of these users have a live device."""
        return await self._presence.online_users(user_ids)

    async def device_connected(self, user_id: int, device_id: str, replica_id: str) -> bool:
        """Register the device with the user's session; True if the user just came online."""
        info = await self._calls.call(user_key(user_id), ConnectDevice(device_id, replica_id))
        self._limiter.set_share(user_id, len({d.replica_id for d in info.devices}))
        return len(info.devices) == 1 and info.devices[0].device_id == device_id

    async def device_disconnected(self, user_id: int, device_id: str, replica_id: str) -> bool:
        """Unregister the device; True if the user has no device left."""
        info = await self._calls.call(user_key(user_id), DisconnectDevice(device_id, replica_id))
        self._limiter.set_share(user_id, len({d.replica_id for d in info.devices}))
        return not info.online

    async def publish_presence(self, user_id: int, online: bool, direct_ids: list[int]) -> None:
        """Tell the peers of the user's direct conversations (one pipeline)."""
        if not direct_ids:
            return
        payload = presence_payload(user_id, online)
        self._publisher.publish_many([(self._keys.conv_channel(c), payload) for c in direct_ids])


def _as_event(message: Message) -> MessageEvent:
    # A storage Message row as the entity would have answered it.
    return MessageEvent(
        conversation_id=message.conversation_id,
        seq=message.seq,
        sender_id=message.sender_id,
        client_msg_id=message.client_msg_id,
        kind=message.kind,
        body=message.body,
        created_at=message.created_at,
    )
