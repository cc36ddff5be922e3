"""Bots: their rows, usage budgets, and the final body of a streamed answer."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from storage.db import Database
from storage.keys import Keys
from storage.models import (
    AVATAR_MAX,
    BOT_PROMPT_MAX,
    DISPLAY_NAME_MAX,
    USERNAME_MAX,
    Bot,
    Message,
    User,
)
from warbler.errors import ErrorCode, WarblerError

BOT_KIND = "bot"
# Bots never log in: no argon2 hash verifies against this (verify_password answers False).
_NO_PASSWORD = "!bot"


class BotStore:
    """Bots and what they have spent; one bot is one ``users`` row plus one ``bots`` row."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_bot(
        self,
        owner_id: int,
        username: str,
        display_name: str,
        *,
        avatar: str = "",
        system_prompt: str = "",
        provider: dict[str, Any] | None = None,
        support_group_id: int | None = None,
        answer_all: bool = False,
        min_confidence: float = 0.3,
        token_budget: int = 0,
    ) -> tuple[Bot, User]:
        """Create the bot's user (kind "bot") and its row in one transaction
        (USERNAME_TAKEN if the name exists)."""
        if not 1 <= len(username) <= USERNAME_MAX:
            raise WarblerError(
                ErrorCode.VALIDATION, f"username must be 1-{USERNAME_MAX} characters"
            )
        if len(display_name) > DISPLAY_NAME_MAX or len(avatar) > AVATAR_MAX:
            raise WarblerError(ErrorCode.VALIDATION, "display name or avatar too long")
        if len(system_prompt) > BOT_PROMPT_MAX:
            raise WarblerError(ErrorCode.VALIDATION, f"system prompt over {BOT_PROMPT_MAX} chars")
        async with self._db.session() as session:
            user = User(
                username=username,
                password_hash=_NO_PASSWORD,
                display_name=display_name or username,
                kind=BOT_KIND,
            )
            session.add(user)
            try:
                await session.flush()
            except IntegrityError as exc:
                raise WarblerError(
                    ErrorCode.USERNAME_TAKEN, f"username {username!r} is taken"
                ) from exc
            bot = Bot(
                user_id=user.id,
                owner_id=owner_id,
                avatar=avatar,
                system_prompt=system_prompt,
                provider=provider or {"kind": "extractive"},
                support_group_id=support_group_id,
                answer_all=answer_all,
                min_confidence=min_confidence,
                token_budget=token_budget,
            )
            session.add(bot)
            try:
                await session.commit()
            except IntegrityError as exc:
                raise WarblerError(ErrorCode.NOT_FOUND, "unknown owner or support group") from exc
            return bot, user

    async def get_bot(self, bot_id: int) -> Bot | None:
        """The bot with this id, or None."""
        async with self._db.session() as session:
            return await session.get(Bot, bot_id)

    async def bots_of_users(self, user_ids: Iterable[int]) -> list[Bot]:
        """The bots whose user ids are among ``user_ids`` (by user id)."""
        wanted = sorted(set(user_ids))
        if not wanted:
            return []
        async with self._db.session() as session:
            result = await session.exec(
                select(Bot).where(col(Bot.user_id).in_(wanted)).order_by(col(Bot.user_id))
            )
            return list(result.all())

    async def bot_user_ids(self) -> set[int]:
        """Every bot's user id (a host keeps this set: bots are few, users many)."""
        async with self._db.session() as session:
            result = await session.exec(select(Bot.user_id))
            return {int(uid) for uid in result.all()}

    async def list_bots(self, owner_id: int) -> list[Bot]:
        """The bots ``owner_id`` owns, oldest first."""
        async with self._db.session() as session:
            result = await session.exec(
                select(Bot).where(col(Bot.owner_id) == owner_id).order_by(col(Bot.id))
            )
            return list(result.all())

    async def update_bot(self, bot_id: int, **fields: Any) -> Bot:
        """Change settings of a bot (NOT_FOUND if it does not exist)."""
        async with self._db.session() as session:
            bot = await session.get(Bot, bot_id)
            if bot is None:
                raise WarblerError(ErrorCode.NOT_FOUND, f"no bot {bot_id}")
            for name, value in fields.items():
                setattr(bot, name, value)
            session.add(bot)
            await session.commit()
            return bot

    async def charge(self, bot_id: int, tokens: int) -> None:
        """Add ``tokens`` to the bot's spend (one atomic UPDATE: answers race across hosts)."""
        async with self._db.session() as session:
            await session.exec(_charged(bot_id, tokens))
            await session.commit()

    async def owner_tokens_used(self, owner_id: int) -> int:
        """What all of ``owner_id``'s bots have spent (the per-owner budget)."""
        async with self._db.session() as session:
            total = await session.scalar(
                select(func.coalesce(func.sum(Bot.tokens_used), 0)).where(
                    col(Bot.owner_id) == owner_id
                )
            )
            return int(total or 0)

    async def finish_answer(
        self,
        conversation_id: int,
        seq: int,
        sender_id: int,
        body: dict[str, Any],
        *,
        charge: tuple[int, int] | None = None,
    ) -> bool:
        """Store the final body of a bot's streamed answer (the message its conversation
        logged as a placeholder) and, in the same transaction, ``charge`` = (bot id, tokens)
        to that bot's spend. Only the bot's own message can change: True if it did (the
        charge is made only then)."""
        async with self._db.session() as session:
            result = await session.exec(
                update(Message)
                .where(
                    col(Message.conversation_id) == conversation_id,
                    col(Message.seq) == seq,
                    col(Message.sender_id) == sender_id,
                )
                .values(body=body)
            )
            changed = bool(result.rowcount)
            if changed and charge is not None and charge[1] > 0:
                await session.exec(_charged(*charge))
            await session.commit()
            return changed


def _charged(bot_id: int, tokens: int) -> Any:
    # An increment in SQL, not a read-modify-write: answers of one bot race across hosts.
    return (
        update(Bot)
        .where(col(Bot.id) == bot_id)
        .values(tokens_used=col(Bot.tokens_used) + max(0, tokens))
    )


class PendingTurnCache:
    """Bot turns in flight, in Redis: added before a turn is handed to its bot entity,
    removed when it is done, so a turn whose sending host died is found and resent. Each
    turn's score is when it is due for a resend."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._key = keys.bot_pending()

    async def add(self, turn: bytes, resend_after_s: float) -> None:
        """Record a turn being sent now: due for a resend ``resend_after_s`` from now."""
        await self._redis.zadd(self._key, {turn: time.time() + resend_after_s})

    async def postpone(self, turn: bytes, delay_s: float) -> None:
        """A turn that failed is due again ``delay_s`` from now (if still pending)."""
        await self._redis.zadd(self._key, {turn: time.time() + delay_s}, xx=True)

    async def done(self, turn: bytes) -> None:
        """The turn finished (answered or deliberately not)."""
        await self._redis.zrem(self._key, turn)

    async def claim_due(self, resend_after_s: float, limit: int = 100) -> list[bytes]:
        """Turns due now, marked as due again ``resend_after_s`` from now (so two sweepers
        rarely resend the same turn; a resend is harmless anyway)."""
        now = time.time()
        found = await self._redis.zrangebyscore(self._key, "-inf", now, start=0, num=limit)
        due = [m if isinstance(m, bytes) else str(m).encode() for m in found]
        if due:
            await self._redis.zadd(self._key, dict.fromkeys(due, now + resend_after_s), xx=True)
        return due
