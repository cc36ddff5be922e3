"""The conversation entity: single writer of one direct or group conversation's log.

State is one ``ConversationState``. Appends hand their draft to the host's group-commit writer
and return ``Later``: the mailbox moves on while the commit is pending, so later appends join
the same batch, and the writer assigns seqs in FIFO order from the state's ``SeqCounter``.
Membership commands wait for their commit before the mailbox moves on.

Membership changes are events in the log (``kind="system"``, body ``{"op": ...}``): every
member sees them in order, and replaying the log rebuilds members and title. The order is log
first, SQL rows second; if a host dies in between, the next activation repairs the rows from
the log (``_sync_rows``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from actors import roles
from actors.bot_link import link_for
from actors.bot_messages import BotTurn
from actors.codec import pack, unpack
from actors.context import EntityContext
from actors.entity import Entity, Later, handles
from actors.messages import (
    AddMembers,
    Append,
    ConversationInfo,
    ConversationKind,
    CreateGroup,
    GetInfo,
    Leave,
    MarkRead,
    MemberInfo,
    MessageEvent,
    OpenDirect,
    ReadLog,
    Receipt,
    RemoveMember,
    Rename,
    Request,
    Role,
    SetRole,
)
from actors.names import CONV, conv_key, parse_key
from actors.wire import Redirect
from storage.messages import PAGE_LIMIT_MAX
from storage.models import CLIENT_MSG_ID_MAX, KIND_MAX, TITLE_MAX, Message
from storage.writer import MessageDraft, SeqCounter, StoredMessage
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import conversation_payload, message_payload, receipt_payload

logger = logging.getLogger(__name__)

SYSTEM = "system"
# How many (sender, client_msg_id) pairs the state remembers for the fast duplicate answer
# (older retries are still caught by the writer's SQL look-up). Small: it costs memory in
# every active entity.
RECENT_MAX = 8
_STATE_FORMAT = 2
_ROLE_CODE = {"owner": 0, "admin": 1, "member": 2}
_CODE_ROLE: tuple[Role, ...] = ("owner", "admin", "member")
_REPLAY_PAGE = PAGE_LIMIT_MAX


@dataclass(slots=True)
class ConversationState:
    """Everything a conversation entity knows. ``members`` is user id -> role in join order;
    ``counter`` is advanced by the writer (it may run ahead while a commit is in flight),
    ``committed_seq`` only by committed messages: it is the checkpoint's version.
    ``system_seq`` is the seq of the last membership event applied, ``rows_seq`` the last one
    known to be written to the SQL membership rows: activation repairs the rows only when
    ``system_seq > rows_seq`` (a host died between the two writes)."""

    conversation_id: int
    kind: ConversationKind
    title: str
    members: dict[int, str]
    counter: SeqCounter = field(default_factory=SeqCounter)
    committed_seq: int = 0
    recent: dict[tuple[int, str], int] = field(default_factory=dict)
    system_seq: int = 0
    rows_seq: int = 0
    # ChatAI: the members that are bots, derived (never checkpointed) from the host's bot-id
    # set as of its version ``bots_at``; -1 means "recompute before the next message".
    bots: frozenset[int] = frozenset()
    bots_at: int = -1

    def dump(self) -> bytes:
        """Compact msgpack: positional fields, roles as small ints."""
        return pack(
            [
                _STATE_FORMAT,
                self.conversation_id,
                self.kind,
                self.title,
                [[uid, _ROLE_CODE[role]] for uid, role in self.members.items()],
                self.committed_seq,
                [[s, c, q] for (s, c), q in self.recent.items()],
                self.system_seq,
                self.rows_seq,
            ]
        )

    @classmethod
    def load(cls, data: bytes) -> ConversationState:
        """Parse what ``dump`` wrote."""
        fields = unpack(data)
        fmt = fields[0]
        if fmt == 1:  # before system_seq/rows_seq: assume the rows need a check
            fields = [*fields, 1, 0]
        elif fmt != _STATE_FORMAT:
            raise WarblerError(ErrorCode.INTERNAL, f"unknown conversation state format {fmt}")
        _, cid, kind, title, members, seq, recent, system_seq, rows_seq = fields
        return cls(
            conversation_id=cid,
            kind=kind,
            title=title,
            members={uid: _CODE_ROLE[code] for uid, code in members},
            counter=SeqCounter(seq),
            committed_seq=seq,
            recent={(s, c): q for s, c, q in recent},
            system_seq=system_seq,
            rows_seq=rows_seq,
        )


def _event(stored: StoredMessage | Message, *, duplicate: bool | None = None) -> MessageEvent:
    dup = duplicate if duplicate is not None else getattr(stored, "duplicate", False)
    return MessageEvent(
        conversation_id=stored.conversation_id,
        seq=stored.seq,
        sender_id=stored.sender_id,
        client_msg_id=stored.client_msg_id,
        kind=stored.kind,
        body=stored.body,
        created_at=stored.created_at,
        duplicate=dup,
    )


def _check_resend(msg: Append, here: int, conversation_id: int, kind: str, body: object) -> None:
    """A resend must be the same message: a ``client_msg_id`` reused for another body (or
    another conversation) is a client bug, and answering ``duplicate`` would hide it."""
    if (conversation_id, kind, body) != (here, msg.kind, msg.body):
        raise WarblerError(
            ErrorCode.CONFLICT,
            f"client_msg_id {msg.client_msg_id!r} was already used for a different message",
        )


def _check_title(title: str) -> str:
    title = title.strip()
    if not 1 <= len(title) <= TITLE_MAX:
        raise WarblerError(ErrorCode.VALIDATION, f"title must be 1-{TITLE_MAX} characters")
    return title


def apply_system(state: ConversationState, seq: int, body: dict[str, Any]) -> None:
    """Apply the membership event logged at ``seq`` to the state (live after its commit, and
    during replay).

    Idempotent in effect when the full log is replayed over the current rows: the last event
    touching a member decides."""
    state.system_seq = max(state.system_seq, seq)
    op = body.get("op")
    if op == "created":
        state.title = body["title"]
        state.members = {int(uid): role for uid, role in body["members"]}
    elif op == "added":
        for uid in body["user_ids"]:
            state.members.setdefault(int(uid), body["role"])
    elif op == "removed":
        state.members.pop(int(body["user_id"]), None)
    elif op == "left":
        state.members.pop(int(body["user_id"]), None)
        new_owner = body.get("new_owner")
        if new_owner is not None and int(new_owner) in state.members:
            state.members[int(new_owner)] = "owner"
    elif op == "renamed":
        state.title = body["title"]
    elif op == "role":
        uid = int(body["user_id"])
        if uid in state.members:
            state.members[uid] = body["role"]
        previous = body.get("previous_owner")
        if previous is not None and int(previous) in state.members:
            state.members[int(previous)] = "admin"
    else:
        logger.warning("conversation %s: unknown system op %r", state.conversation_id, op)


class ConversationEntity(Entity[ConversationState]):
    """A direct or group conversation (see the module docstring; permissions in ``roles``)."""

    kind = CONV
    replays_log = True
    __slots__ = ()

    # --- lifecycle ----------------------------------------------------------------------------

    @classmethod
    async def restore(
        cls, key: str, ctx: EntityContext, checkpoint: tuple[int, bytes] | None
    ) -> ConversationEntity:
        """From the checkpoint (or the SQL rows), then replay of the log after its version."""
        _, conversation_id = parse_key(key)
        first_page: list[Message] | None = None
        if checkpoint is not None:
            state = ConversationState.load(checkpoint[1])
        else:
            # Three independent reads: issue them together (a cold activation's latency is
            # the sum of its round trips).
            conversation, members, first_page = await asyncio.gather(
                ctx.conversations.get_conversation(conversation_id),
                ctx.conversations.list_members(conversation_id),
                ctx.messages.page_messages(conversation_id, after_seq=0, limit=_REPLAY_PAGE),
            )
            if conversation is None:
                raise WarblerError(ErrorCode.NOT_FOUND, f"no conversation {conversation_id}")
            kind: ConversationKind = "direct" if conversation.kind == "direct" else "group"
            state = ConversationState(
                conversation_id=conversation_id,
                kind=kind,
                title=conversation.title or "",
                members={m.user_id: m.role for m in members},
            )
        entity = cls(key, ctx, state)
        await entity._replay(first_page)
        if state.system_seq > state.rows_seq:
            await entity._sync_rows()
            state.rows_seq = state.system_seq
        # A conversation with no checkpoint may be new, with a bot created a moment ago.
        await link_for(ctx).refresh(max_age_s=0.0 if checkpoint is None else 10.0)
        return entity

    def snapshot(self) -> tuple[int, bytes]:
        """Version = the last committed seq the state covers."""
        return self.state.committed_seq, self.state.dump()

    async def _replay(self, page: list[Message] | None = None) -> None:
        state = self.state
        while True:
            if page is None:
                page = await self.ctx.messages.page_messages(
                    state.conversation_id, after_seq=state.committed_seq, limit=_REPLAY_PAGE
                )
            for message in page:
                self._apply_committed(message.seq, message.sender_id, message.client_msg_id)
                if message.kind == SYSTEM:
                    apply_system(state, message.seq, message.body)
            if len(page) < _REPLAY_PAGE:
                return
            page = None

    def _apply_committed(self, seq: int, sender_id: int, client_msg_id: str) -> None:
        state = self.state
        if seq > state.committed_seq:
            state.committed_seq = seq
        if seq > state.counter.last_seq:
            state.counter.last_seq = seq
        recent = state.recent
        recent[(sender_id, client_msg_id)] = seq
        if len(recent) > RECENT_MAX:
            del recent[next(iter(recent))]
        self.changes += 1

    async def _sync_rows(self) -> None:
        """Make the SQL membership rows and title match the state rebuilt from the log."""
        state, store = self.state, self.ctx.conversations
        cid = state.conversation_id
        rows = {m.user_id: m.role for m in await store.list_members(cid)}
        if rows == state.members:
            return
        logger.warning("conversation %s: membership rows drifted from the log; repairing", cid)
        for uid in rows.keys() - state.members.keys():
            await store.remove_member(cid, uid)
        missing = [u for u in state.members if u not in rows]
        for role in roles.ROLES:
            group = [u for u in missing if state.members[u] == role]
            if group:
                await store.add_members(cid, group, role)
        for uid, role in state.members.items():
            if uid in rows and rows[uid] != role:
                await store.set_role(cid, uid, role)

    # --- the log ----------------------------------------------------------------------------

    @handles(Append)
    def append(self, msg: Append) -> Later[MessageEvent]:
        """Answers after the SQL commit, through ``Later`` (the mailbox does not wait)."""
        state = self.state
        roles.require_member(state.members, msg.sender_id, state.conversation_id)
        if msg.kind == SYSTEM or not 1 <= len(msg.kind) <= KIND_MAX:
            raise WarblerError(
                ErrorCode.VALIDATION, f"kind must be 1-{KIND_MAX} characters, not 'system'"
            )
        if not 1 <= len(msg.client_msg_id) <= CLIENT_MSG_ID_MAX:
            raise WarblerError(
                ErrorCode.VALIDATION, f"client_msg_id must be 1-{CLIENT_MSG_ID_MAX} characters"
            )
        if not isinstance(msg.body, dict):
            raise WarblerError(ErrorCode.VALIDATION, "body must be a JSON object")
        size = len(json.dumps(msg.body, separators=(",", ":"), ensure_ascii=False).encode())
        if size > self.ctx.settings.max_body_bytes:
            raise WarblerError(
                ErrorCode.TOO_LARGE,
                f"body is {size} bytes; the limit is {self.ctx.settings.max_body_bytes}",
            )
        if (msg.sender_id, msg.client_msg_id) in state.recent:
            return Later(self._resent(msg))
        draft = MessageDraft(
            state.conversation_id, msg.sender_id, msg.client_msg_id, msg.kind, msg.body
        )
        # Queued with the writer right here, in mailbox order; the reply is a future completed
        # by a callback (no task per append: tasks were a visible share of a host's time).
        stored = self.ctx.writer.submit(draft, state.counter)
        answer: asyncio.Future[MessageEvent] = asyncio.get_running_loop().create_future()
        stored.add_done_callback(partial(self._committed, answer, msg))
        return Later(answer)

    async def _resent(self, msg: Append) -> MessageEvent:
        event = await self._stored_event(msg.sender_id, msg.client_msg_id)
        here = self.state.conversation_id
        _check_resend(msg, here, event.conversation_id, event.kind, event.body)
        return event

    def _committed(
        self,
        answer: asyncio.Future[MessageEvent],
        msg: Append,
        stored: asyncio.Future[StoredMessage],
    ) -> None:
        # Callbacks run in the order the writer resolves its futures, i.e. in seq order.
        if answer.done():
            return
        if stored.cancelled():
            answer.cancel()
            return
        exc = stored.exception()
        if exc is not None:
            answer.set_exception(exc)
            return
        try:
            result = stored.result()
            if result.duplicate:
                here = self.state.conversation_id
                _check_resend(msg, here, result.conversation_id, result.kind, result.body)
            answer.set_result(self._on_stored(result))
        except Exception as error:  # never strand the caller
            answer.set_exception(error)

    async def _commit(self, draft: MessageDraft) -> MessageEvent:
        return self._on_stored(await self.ctx.writer.submit(draft, self.state.counter))

    def _on_stored(self, stored: StoredMessage) -> MessageEvent:
        """Apply a committed message to the state and publish it; its event for the caller."""
        event = _event(stored)
        if not stored.duplicate:
            self._apply_committed(stored.seq, stored.sender_id, stored.client_msg_id)
            payload = message_payload(
                stored.conversation_id,
                stored.seq,
                stored.sender_id,
                stored.client_msg_id,
                stored.kind,
                stored.body,
                stored.created_at,
            )
            self.ctx.publisher.publish(self.ctx.keys.conv_channel(stored.conversation_id), payload)
            if stored.kind != SYSTEM:
                self._hand_to_bots(event)
        return event

    def _hand_to_bots(self, event: MessageEvent) -> None:
        """ChatAI: after the commit, a member's message in a conversation with bots goes to
        its bot entity (in the background). Without bots this costs two int compares."""
        state, link = self.state, link_for(self.ctx)
        if state.bots_at != link.version:
            state.bots = link.ids.intersection(state.members)
            state.bots_at = link.version
        if not state.bots or event.sender_id in state.bots:
            return  # no bots here, or a bot speaking: bots never answer bots
        text = event.body.get("text")
        if not isinstance(text, str) or not text.strip():
            return
        link.send_turn(
            BotTurn(
                event.conversation_id,
                event.seq,
                event.sender_id,
                text,
                state.kind,
                tuple(sorted(state.bots)),
                event.created_at.timestamp(),
            )
        )

    async def _stored_event(self, sender_id: int, client_msg_id: str) -> MessageEvent:
        stored = await self.ctx.messages.get_by_client_id(sender_id, client_msg_id)
        if stored is None or stored.conversation_id != self.state.conversation_id:
            raise WarblerError(ErrorCode.INTERNAL, "a remembered message is missing from SQL")
        return _event(stored, duplicate=True)

    @handles(ReadLog)
    def read_log(self, msg: ReadLog) -> Later[list[MessageEvent]]:
        """A page of the log (reads run beside the mailbox: they change nothing)."""
        state = self.state
        roles.require_member(state.members, msg.user_id, state.conversation_id)
        cap = min(self.ctx.settings.history_page_max, PAGE_LIMIT_MAX)
        if not 1 <= msg.limit <= cap:
            raise WarblerError(ErrorCode.VALIDATION, f"limit must be 1-{cap}")
        return Later(self._page(msg))

    async def _page(self, msg: ReadLog) -> list[MessageEvent]:
        rows = await self.ctx.messages.page_messages(
            self.state.conversation_id,
            after_seq=msg.after_seq,
            before_seq=msg.before_seq,
            limit=msg.limit,
        )
        return [_event(m, duplicate=False) for m in rows]

    @handles(MarkRead)
    def mark_read(self, msg: MarkRead) -> Later[Receipt]:
        """Advance the member's read cursor (clamped to the last committed seq)."""
        state = self.state
        roles.require_member(state.members, msg.user_id, state.conversation_id)
        if msg.seq < 0:
            raise WarblerError(ErrorCode.VALIDATION, "seq must not be negative")
        return Later(self._mark_read(msg.user_id, min(msg.seq, state.committed_seq)))

    async def _mark_read(self, user_id: int, seq: int) -> Receipt:
        cid = self.state.conversation_id
        stored = await self.ctx.conversations.set_read_seq(cid, user_id, seq)
        receipt = Receipt(cid, user_id, stored)
        payload = receipt_payload(cid, user_id, stored)
        self.ctx.publisher.publish(self.ctx.keys.conv_channel(cid), payload)
        return receipt

    @handles(GetInfo)
    def get_info(self, msg: GetInfo) -> ConversationInfo:
        """Kind, title, members with roles, last seq."""
        roles.require_member(self.state.members, msg.user_id, self.state.conversation_id)
        return self._info()

    @handles(OpenDirect)
    def open_direct(self, msg: OpenDirect) -> ConversationInfo:
        """The info of the direct conversation the factory created or found."""
        for uid in (msg.user_id, msg.peer_id):
            roles.require_member(self.state.members, uid, self.state.conversation_id)
        return self._info()

    def _info(self) -> ConversationInfo:
        s = self.state
        members = tuple(MemberInfo(uid, _as_role(role)) for uid, role in s.members.items())
        title = s.title if s.kind == "group" else None
        return ConversationInfo(s.conversation_id, s.kind, title, members, s.committed_seq)

    # --- membership -------------------------------------------------------------------------

    @handles(CreateGroup)
    async def create_group(self, msg: CreateGroup) -> MessageEvent:
        """Log the creation of a group the factory has just inserted."""
        s = self.state
        done = await self._done_before(msg.creator_id, msg.op_id)
        if done is not None:
            return done
        try:
            if s.committed_seq > 0 or s.kind != "group":
                raise WarblerError(ErrorCode.CONFLICT, f"conversation {s.conversation_id} exists")
            roles.require_member(s.members, msg.creator_id, s.conversation_id)
        except WarblerError as exc:
            return await self._retry_or_raise(msg.creator_id, msg.op_id, exc)
        body = {
            "op": "created",
            "by": msg.creator_id,
            "title": s.title,
            "members": [[uid, role] for uid, role in s.members.items()],
        }
        event = await self._log_system(msg.creator_id, msg.op_id, body)
        s.rows_seq = max(s.rows_seq, s.system_seq)  # the factory wrote these rows
        self._notify_users(list(s.members), "added")
        return event

    @handles(AddMembers)
    async def add_members(self, msg: AddMembers) -> MessageEvent:
        """Owner/admin add users (only the owner adds admins); present members are skipped."""
        done = await self._done_before(msg.actor_id, msg.op_id)
        if done is not None:
            return done
        try:
            actor_role = self._group_actor(msg.actor_id)
            roles.check_add(actor_role, msg.role)
            if not msg.user_ids:
                raise WarblerError(ErrorCode.VALIDATION, "user_ids must not be empty")
            new = [u for u in dict.fromkeys(msg.user_ids) if u not in self.state.members]
            if not new:
                raise WarblerError(ErrorCode.CONFLICT, "every user is already a member")
            cap = self.ctx.settings.max_group_members
            if len(self.state.members) + len(new) > cap:
                raise WarblerError(ErrorCode.LIMIT_REACHED, f"a group has at most {cap} members")
            found = {u.id for u in await self.ctx.users.list_users(new)}
            missing = sorted(set(new) - found)
            if missing:
                raise WarblerError(
                    ErrorCode.NOT_FOUND,
                    f"unknown user(s): {missing}",
                    details={"user_ids": missing},
                )
        except WarblerError as exc:
            return await self._retry_or_raise(msg.actor_id, msg.op_id, exc)
        body = {"op": "added", "by": msg.actor_id, "user_ids": new, "role": msg.role}
        event = await self._log_system(msg.actor_id, msg.op_id, body)
        await self._write_rows((self.ctx.conversations.add_members, (new, msg.role)))
        self._notify_users(new, "added")
        return event

    @handles(RemoveMember)
    async def remove_member(self, msg: RemoveMember) -> MessageEvent:
        """Owner removes anyone else; an admin removes plain members."""
        done = await self._done_before(msg.actor_id, msg.op_id)
        if done is not None:
            return done
        try:
            actor_role = self._group_actor(msg.actor_id)
            if msg.user_id == msg.actor_id:
                raise WarblerError(ErrorCode.BAD_REQUEST, "to remove yourself, leave")
            target_role = self.state.members.get(msg.user_id)
            if target_role is None:
                raise WarblerError(ErrorCode.NOT_FOUND, f"user {msg.user_id} is not a member")
            roles.check_remove(actor_role, target_role)
        except WarblerError as exc:
            return await self._retry_or_raise(msg.actor_id, msg.op_id, exc)
        body = {"op": "removed", "by": msg.actor_id, "user_id": msg.user_id}
        event = await self._log_system(msg.actor_id, msg.op_id, body)
        await self._write_rows((self.ctx.conversations.remove_member, (msg.user_id,)))
        self._notify_users([msg.user_id], "removed")
        return event

    @handles(Leave)
    async def leave(self, msg: Leave) -> MessageEvent:
        """Anyone leaves; an owner hands ownership to the oldest admin, else oldest member."""
        done = await self._done_before(msg.user_id, msg.op_id)
        if done is not None:
            return done
        try:
            role = self._group_actor(msg.user_id)
        except WarblerError as exc:
            return await self._retry_or_raise(msg.user_id, msg.op_id, exc)
        new_owner = roles.heir(self.state.members, msg.user_id) if role == "owner" else None
        body = {"op": "left", "by": msg.user_id, "user_id": msg.user_id, "new_owner": new_owner}
        event = await self._log_system(msg.user_id, msg.op_id, body)
        store = self.ctx.conversations
        if new_owner is not None:
            await self._write_rows(
                (store.set_role, (new_owner, "owner")), (store.remove_member, (msg.user_id,))
            )
            self._notify_users([new_owner], "updated")
        else:
            await self._write_rows((store.remove_member, (msg.user_id,)))
        self._notify_users([msg.user_id], "removed")
        return event

    @handles(Rename)
    async def rename(self, msg: Rename) -> MessageEvent:
        """Owner or admin set the title."""
        done = await self._done_before(msg.actor_id, msg.op_id)
        if done is not None:
            return done
        try:
            roles.require_manager(self._group_actor(msg.actor_id), "rename the group")
            title = _check_title(msg.title)
        except WarblerError as exc:
            return await self._retry_or_raise(msg.actor_id, msg.op_id, exc)
        body = {"op": "renamed", "by": msg.actor_id, "title": title}
        event = await self._log_system(msg.actor_id, msg.op_id, body)
        await self._write_rows((self.ctx.conversations.rename, (title,)))
        return event

    @handles(SetRole)
    async def set_role(self, msg: SetRole) -> MessageEvent:
        """Only the owner changes roles; ``role="owner"`` transfers ownership."""
        done = await self._done_before(msg.actor_id, msg.op_id)
        if done is not None:
            return done
        try:
            roles.require_owner(self._group_actor(msg.actor_id), "change roles")
            if msg.role not in roles.ROLES:
                raise WarblerError(ErrorCode.VALIDATION, f"role must be one of {roles.ROLES}")
            if msg.user_id == msg.actor_id:
                raise WarblerError(ErrorCode.BAD_REQUEST, "the owner cannot change their own role")
            if msg.user_id not in self.state.members:
                raise WarblerError(ErrorCode.NOT_FOUND, f"user {msg.user_id} is not a member")
        except WarblerError as exc:
            return await self._retry_or_raise(msg.actor_id, msg.op_id, exc)
        body: dict[str, Any] = {
            "op": "role",
            "by": msg.actor_id,
            "user_id": msg.user_id,
            "role": msg.role,
        }
        if msg.role == "owner":
            body["previous_owner"] = msg.actor_id
        event = await self._log_system(msg.actor_id, msg.op_id, body)
        store = self.ctx.conversations
        writes: list[tuple[Any, tuple[Any, ...]]] = [(store.set_role, (msg.user_id, msg.role))]
        if msg.role == "owner":
            writes.append((store.set_role, (msg.actor_id, "admin")))
        await self._write_rows(*writes)
        self._notify_users([msg.user_id], "updated")
        return event

    # --- membership helpers -------------------------------------------------------------------

    def _group_actor(self, user_id: int) -> str:
        s = self.state
        if s.kind != "group":
            raise WarblerError(ErrorCode.UNSUPPORTED, "direct conversations have fixed members")
        return roles.require_member(s.members, user_id, s.conversation_id)

    async def _done_before(self, actor_id: int, op_id: str) -> MessageEvent | None:
        """The event of an earlier attempt of this command, if the state remembers one."""
        if (actor_id, op_id) in self.state.recent:
            return await self._stored_event(actor_id, op_id)
        return None

    async def _retry_or_raise(self, actor_id: int, op_id: str, error: WarblerError) -> MessageEvent:
        """A command failed validation: if it is a retry of one already logged (older than
        the state's recent ids), answer that; otherwise raise the validation error."""
        stored = await self.ctx.messages.get_by_client_id(actor_id, op_id)
        if stored is not None and stored.conversation_id == self.state.conversation_id:
            return _event(stored, duplicate=True)
        raise error

    async def _log_system(self, actor_id: int, op_id: str, body: dict[str, Any]) -> MessageEvent:
        draft = MessageDraft(self.state.conversation_id, actor_id, op_id, SYSTEM, body)
        # Through a task, like appends: tasks start in creation order, so this draft reaches
        # the writer after the appends this mailbox handled before it.
        event = await asyncio.ensure_future(self._commit(draft))
        if not event.duplicate:
            apply_system(self.state, event.seq, body)
            if body.get("op") in ("created", "added"):
                await link_for(self.ctx).refresh(max_age_s=0.0)  # a new member may be a bot
            self.state.bots_at = -1
        return event

    async def _write_rows(self, *writes: tuple[Any, tuple[Any, ...]]) -> None:
        # The log already holds the change; if a row write fails, rows_seq stays behind and
        # the next activation repairs the rows from the log, so the command still succeeds.
        state = self.state
        target = state.system_seq
        try:
            for method, args in writes:
                await method(state.conversation_id, *args)
        except Exception:
            logger.exception(
                "conversation %s: membership row write failed; will repair on activation",
                state.conversation_id,
            )
            return
        state.rows_seq = max(state.rows_seq, target)

    def _notify_users(
        self, user_ids: list[int], event: Literal["added", "removed", "updated"]
    ) -> None:
        payload = conversation_payload(event, self.state.conversation_id)
        keys = self.ctx.keys
        self.ctx.publisher.publish_many([(keys.user_channel(u), payload) for u in user_ids])


async def _check_group_caps(ctx: EntityContext, message: CreateGroup) -> None:
    """The per-user caps on a new group: its size, and how many groups its creator owns."""
    size = len(set(message.member_ids) | {message.creator_id})
    if size > ctx.settings.max_group_members:
        raise WarblerError(
            ErrorCode.LIMIT_REACHED,
            f"a group has at most {ctx.settings.max_group_members} members",
        )
    if await ctx.conversations.count_owned_groups(message.creator_id) >= (
        ctx.settings.max_groups_per_user
    ):
        raise WarblerError(
            ErrorCode.LIMIT_REACHED,
            f"a user owns at most {ctx.settings.max_groups_per_user} groups",
        )


def _as_role(role: str) -> Role:
    return _CODE_ROLE[_ROLE_CODE[role]]


async def create_conversation(ctx: EntityContext, message: Request[Any]) -> Redirect:
    """The ``"conv:new"`` factory: insert the conversation rows, then redirect the command to
    the new conversation's entity. Runs outside any mailbox (it only inserts new rows)."""
    if isinstance(message, CreateGroup):
        earlier = await ctx.messages.get_by_client_id(message.creator_id, message.op_id)
        if earlier is not None:  # a retry of a creation that was logged
            return Redirect(conv_key(earlier.conversation_id), message)
        title = _check_title(message.title)
        await _check_group_caps(ctx, message)
        # Keyed by the command: if we crash after this insert and before the creation is
        # logged, the retry finds this group instead of inserting an orphan twin.
        conversation = await ctx.conversations.create_group(
            title,
            message.creator_id,
            message.member_ids,
            creation_key=f"{message.creator_id}:{message.op_id}",
        )
        return Redirect(conv_key(conversation.id), message)
    if isinstance(message, OpenDirect):
        conversation = await ctx.conversations.get_or_create_direct(
            message.user_id, message.peer_id
        )
        return Redirect(conv_key(conversation.id), message)
    raise WarblerError(
        ErrorCode.UNSUPPORTED, f"conv:new takes CreateGroup or OpenDirect, not {type(message)}"
    )
