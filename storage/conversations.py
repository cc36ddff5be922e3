"""Conversations, their members and read cursors."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, func, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.db import Database
from storage.models import (
    CREATION_KEY_MAX,
    ROLES,
    TITLE_MAX,
    Conversation,
    Membership,
    Message,
    User,
)
from warbler.errors import ErrorCode, WarblerError


@dataclass(frozen=True)
class ConversationSummary:
    """One line of a user's conversation list.

    ``unread`` is ``last_seq - read_seq`` (never negative): every message after the user's read
    cursor, their own included, since a sending client advances its cursor when it sends.
    """

    conversation: Conversation
    role: str
    read_seq: int
    last_seq: int
    unread: int
    last_message: Message | None


def direct_key(user_a: int, user_b: int) -> str:
    """The ``direct_key`` of the direct conversation between two users: ``"min:max"``."""
    lo, hi = sorted((user_a, user_b))
    return f"{lo}:{hi}"


def _check_title(title: str) -> None:
    if len(title) > TITLE_MAX:
        raise WarblerError(ErrorCode.VALIDATION, f"title must be at most {TITLE_MAX} characters")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise WarblerError(ErrorCode.VALIDATION, f"role must be one of {', '.join(ROLES)}")


async def _require_users(session: AsyncSession, user_ids: Iterable[int]) -> None:
    wanted = set(user_ids)
    if not wanted:
        return
    found = set((await session.exec(select(User.id).where(col(User.id).in_(wanted)))).all())
    missing = sorted(wanted - found)
    if missing:
        raise WarblerError(
            ErrorCode.NOT_FOUND, f"unknown user(s): {missing}", details={"user_ids": missing}
        )


async def _require_conversation(session: AsyncSession, conversation_id: int) -> Conversation:
    conversation = await session.get(Conversation, conversation_id)
    if conversation is None:
        raise WarblerError(ErrorCode.NOT_FOUND, f"no conversation {conversation_id}")
    return conversation


class ConversationStore:
    """Conversations and memberships. Changes to a conversation are made by its entity (the
    single writer); the store only keeps the rows consistent."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_group(
        self,
        title: str,
        creator_id: int,
        member_ids: Iterable[int],
        *,
        creation_key: str | None = None,
    ) -> Conversation:
        """A new group with the creator as owner and ``member_ids`` as members.

        With a ``creation_key`` (the creating command's identity), a second call with the same
        key returns the group the first one inserted, members and all, instead of a new one.
        """
        _check_title(title)
        if creation_key is not None and not 0 < len(creation_key) <= CREATION_KEY_MAX:
            raise WarblerError(ErrorCode.VALIDATION, f"creation key of 1-{CREATION_KEY_MAX}")
        members = [m for m in dict.fromkeys(member_ids) if m != creator_id]
        if creation_key is not None:
            existing = await self._get_created(creation_key)
            if existing is not None:
                return existing
        try:
            async with self._db.session() as session:
                await _require_users(session, [creator_id, *members])
                conversation = Conversation(
                    kind="group", title=title, created_by=creator_id, creation_key=creation_key
                )
                session.add(conversation)
                await session.flush()
                session.add(
                    Membership(conversation_id=conversation.id, user_id=creator_id, role="owner")
                )
                session.add_all(
                    Membership(conversation_id=conversation.id, user_id=m, role="member")
                    for m in members
                )
                await session.commit()
                return conversation
        except IntegrityError:
            # Two retries raced: the loser reads the winner's group (same members).
            existing = await self._get_created(creation_key) if creation_key else None
            if existing is None:
                raise
            return existing

    async def _get_created(self, creation_key: str) -> Conversation | None:
        async with self._db.session() as session:
            result = await session.exec(
                select(Conversation).where(col(Conversation.creation_key) == creation_key)
            )
            return result.first()

    async def get_or_create_direct(self, user_a: int, user_b: int) -> Conversation:
        """The one direct conversation between two users, created on first use (race-free:
        ``direct_key`` is unique, and the loser of a race reads the winner's row)."""
        if user_a == user_b:
            raise WarblerError(ErrorCode.VALIDATION, "a direct conversation needs two users")
        key = direct_key(user_a, user_b)
        existing = await self._get_direct(key)
        if existing is not None:
            return existing
        try:
            async with self._db.session() as session:
                await _require_users(session, [user_a, user_b])
                conversation = Conversation(
                    kind="direct", title="", created_by=user_a, direct_key=key
                )
                session.add(conversation)
                await session.flush()
                session.add_all(
                    Membership(conversation_id=conversation.id, user_id=u, role="member")
                    for u in (user_a, user_b)
                )
                await session.commit()
                return conversation
        except IntegrityError:
            existing = await self._get_direct(key)
            if existing is None:
                raise
            return existing

    async def _get_direct(self, key: str) -> Conversation | None:
        async with self._db.session() as session:
            result = await session.exec(
                select(Conversation).where(col(Conversation.direct_key) == key)
            )
            return result.first()

    async def get_conversation(self, conversation_id: int) -> Conversation | None:
        """The conversation, or None."""
        async with self._db.session() as session:
            return await session.get(Conversation, conversation_id)

    async def rename(self, conversation_id: int, title: str) -> Conversation:
        """Set a conversation's title."""
        _check_title(title)
        async with self._db.session() as session:
            conversation = await _require_conversation(session, conversation_id)
            conversation.title = title
            session.add(conversation)
            await session.commit()
            return conversation

    async def add_members(
        self, conversation_id: int, user_ids: Iterable[int], role: str = "member"
    ) -> list[Membership]:
        """Add users to a group; returns the memberships created (present members are skipped)."""
        _check_role(role)
        wanted = list(dict.fromkeys(user_ids))
        async with self._db.session() as session:
            conversation = await _require_conversation(session, conversation_id)
            if conversation.kind != "group":
                raise WarblerError(ErrorCode.BAD_REQUEST, "only groups can gain members")
            await _require_users(session, wanted)
            present = set(
                (
                    await session.exec(
                        select(Membership.user_id).where(
                            col(Membership.conversation_id) == conversation_id,
                            col(Membership.user_id).in_(wanted),
                        )
                    )
                ).all()
            )
            added = [
                Membership(conversation_id=conversation_id, user_id=u, role=role)
                for u in wanted
                if u not in present
            ]
            session.add_all(added)
            await session.commit()
            return added

    async def remove_member(self, conversation_id: int, user_id: int) -> bool:
        """Remove a membership; True if there was one."""
        async with self._db.session() as session:
            result = await session.exec(
                delete(Membership).where(
                    col(Membership.conversation_id) == conversation_id,
                    col(Membership.user_id) == user_id,
                )
            )
            await session.commit()
            return bool(result.rowcount)

    async def set_role(self, conversation_id: int, user_id: int, role: str) -> Membership:
        """Change a member's role; ``WarblerError(NOT_MEMBER)`` if they are not a member."""
        _check_role(role)
        async with self._db.session() as session:
            membership = await session.get(Membership, (conversation_id, user_id))
            if membership is None:
                raise WarblerError(
                    ErrorCode.NOT_MEMBER, f"user {user_id} is not in conversation {conversation_id}"
                )
            membership.role = role
            session.add(membership)
            await session.commit()
            return membership

    async def get_membership(self, conversation_id: int, user_id: int) -> Membership | None:
        """The membership, or None."""
        async with self._db.session() as session:
            return await session.get(Membership, (conversation_id, user_id))

    async def list_members(self, conversation_id: int) -> list[Membership]:
        """Every membership of the conversation, oldest first."""
        async with self._db.session() as session:
            result = await session.exec(
                select(Membership)
                .where(col(Membership.conversation_id) == conversation_id)
                .order_by(col(Membership.joined_at), col(Membership.user_id))
            )
            return list(result.all())

    async def memberships_of(self, user_ids: list[int]) -> dict[int, dict[int, str]]:
        """user id -> {conversation id: kind} for each user (empty when they have none): one
        light query for many users (a gateway's concurrent hellos), no ORM rows."""
        out: dict[int, dict[int, str]] = {u: {} for u in user_ids}
        if not user_ids:
            return out
        stmt = (
            select(Membership.user_id, Conversation.id, Conversation.kind)
            .join(Conversation, col(Conversation.id) == col(Membership.conversation_id))
            .where(col(Membership.user_id).in_(user_ids))
        )
        async with self._db.session() as session:
            for user_id, conv_id, kind in (await session.exec(stmt)).all():
                if conv_id is not None:
                    out[user_id][int(conv_id)] = str(kind)
        return out

    async def count_owned_groups(self, user_id: int) -> int:
        """How many groups the user owns (the per-user cap on creating groups)."""
        stmt = (
            select(func.count())
            .select_from(Membership)
            .where(col(Membership.user_id) == user_id, col(Membership.role) == "owner")
        )
        async with self._db.session() as session:
            return int((await session.exec(stmt)).one())

    async def list_user_conversation_ids(self, user_id: int) -> list[int]:
        """Ids of the conversations the user belongs to, ascending."""
        async with self._db.session() as session:
            result = await session.exec(
                select(Membership.conversation_id)
                .where(col(Membership.user_id) == user_id)
                .order_by(col(Membership.conversation_id))
            )
            return list(result.all())

    async def list_user_conversations(self, user_id: int) -> list[ConversationSummary]:
        """The user's conversations, most recently active first, in two queries: conversations
        with membership and last seq (a correlated MAX on the (conversation_id, seq) index),
        then the last messages by (conversation_id, seq)."""
        last_seq = (
            select(func.max(Message.seq))
            .where(col(Message.conversation_id) == col(Conversation.id))
            .correlate(Conversation)
            .scalar_subquery()
        )
        async with self._db.session() as session:
            rows = (
                await session.exec(
                    select(Conversation, Membership.role, Membership.read_seq, last_seq)
                    .join(Membership, col(Membership.conversation_id) == col(Conversation.id))
                    .where(col(Membership.user_id) == user_id)
                )
            ).all()
            pairs = [(conv.id, int(seq)) for conv, _, _, seq in rows if seq]
            last: dict[int, Message] = {}
            if pairs:
                messages = await session.exec(
                    select(Message).where(
                        tuple_(col(Message.conversation_id), col(Message.seq)).in_(pairs)
                    )
                )
                last = {m.conversation_id: m for m in messages.all()}
        summaries = [
            ConversationSummary(
                conversation=conv,
                role=role,
                read_seq=read_seq,
                last_seq=int(seq or 0),
                unread=max(int(seq or 0) - read_seq, 0),
                last_message=last.get(conv.id),
            )
            for conv, role, read_seq, seq in rows
        ]
        summaries.sort(
            key=lambda s: (
                s.last_message.created_at if s.last_message else s.conversation.created_at,
                s.conversation.id,
            ),
            reverse=True,
        )
        return summaries

    async def set_read_seq(self, conversation_id: int, user_id: int, seq: int) -> int:
        """Advance the user's read cursor to ``seq`` (never lowers it); returns the stored value."""
        if seq < 0:
            raise WarblerError(ErrorCode.VALIDATION, "seq must not be negative")
        async with self._db.session() as session:
            await session.exec(
                update(Membership)
                .where(
                    col(Membership.conversation_id) == conversation_id,
                    col(Membership.user_id) == user_id,
                    col(Membership.read_seq) < seq,
                )
                .values(read_seq=seq)
            )
            stored = await session.scalar(
                select(Membership.read_seq).where(
                    col(Membership.conversation_id) == conversation_id,
                    col(Membership.user_id) == user_id,
                )
            )
            await session.commit()
        if stored is None:
            raise WarblerError(
                ErrorCode.NOT_MEMBER, f"user {user_id} is not in conversation {conversation_id}"
            )
        return int(stored)
