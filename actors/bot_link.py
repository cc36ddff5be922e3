"""What a host process shares for ChatAI: the set of bot user ids (so conversation entities
know their bot members with no query per message), the Runtime that carries bot turns and
bot answers between entities, the embedder client and each bot's cached vectors.

One ``BotLink`` per host (per EntityContext), created on first use: a cluster without bots
never opens its Runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from actors.bot_embedding import DIM, EmbedClient
from actors.bot_messages import BotTurn, bot_key
from actors.context import EntityContext
from storage.bots import BotStore, PendingTurnCache
from storage.keys import Keys
from storage.knowledge import KnowledgeIndex, KnowledgeStore
from storage.models import Bot
from storage.redis import connect_redis
from warbler.errors import WarblerError

if TYPE_CHECKING:
    from actors.runtime import Runtime

logger = logging.getLogger(__name__)

# How old the bot-id set may be when a conversation with a checkpoint activates (a new
# conversation, and every AddMembers, reload it first).
BOT_IDS_MAX_AGE_S = 10.0
# Concurrent bot turns one host may have in flight to one other host: each batch of turns
# waits for its slowest answer, so allow many small batches.
TURN_BATCHES_IN_FLIGHT = 64
# A turn not finished this long after it was (last) sent is resent by a sweeping host: its
# sender may have died with it. A turn still running is harmless to resend (the bot entity
# answers each trigger once), so this only bounds how late a lost turn is answered.
TURN_RESEND_AFTER_S = 15.0
SWEEP_EVERY_S = 3.0
# A turn its bot entity failed (it answers ``turn_retry``: the failures so far) is resent after
# these delays, one per failure; the entity gives up after actors.bot.TURN_ATTEMPTS runs.
TURN_RETRY_DELAYS_S = (2.0, 6.0, 18.0)


class BotLink:
    """See the module docstring."""

    def __init__(self, ctx: EntityContext) -> None:
        self.ctx = ctx
        self.bots = BotStore(ctx.db)
        self.knowledge = KnowledgeStore(ctx.db)
        self.embedder = EmbedClient(ctx.settings.namespace)
        self.ids: frozenset[int] = frozenset()
        # Grows whenever ``ids`` changes: entities compare it with the one they computed at.
        self.version = 0
        self._loaded_at = -1e9
        self._lock = asyncio.Lock()
        self._runtime: Runtime | None = None
        self._runtime_lock = asyncio.Lock()
        self._indexes: dict[int, KnowledgeIndex] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: PendingTurnCache | None = None
        self._redis: Any = None
        self._sweeper: asyncio.Task[None] | None = None
        self.turns_sent = 0
        self.turns_failed = 0
        self.turns_resent = 0

    def _pending_cache(self) -> PendingTurnCache:
        if self._pending is None:
            redis_url = self.ctx.settings.redis_url
            assert redis_url, "hosts always have a Redis URL"
            self._redis = connect_redis(redis_url)
            self._pending = PendingTurnCache(self._redis, Keys(self.ctx.settings.namespace))
        return self._pending

    def start_sweeper(self) -> None:
        """Sweep the pending turns from now on (the host calls this when it starts)."""
        self._ensure_sweeper()

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        """Resend turns whose sender died (see TURN_RESEND_AFTER_S) and failed turns when their
        retry is due (TURN_RETRY_DELAYS_S); every host sweeps."""
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            try:
                for raw in await self._pending_cache().claim_due(TURN_RESEND_AFTER_S):
                    self.turns_resent += 1
                    logger.info("resending bot turn %s", raw[:80])
                    self._spawn(self._send(turn_from_bytes(raw), raw))
            except Exception:
                logger.exception("bot turn sweep failed")

    async def refresh(self, *, max_age_s: float = BOT_IDS_MAX_AGE_S) -> frozenset[int]:
        """The bot user ids, reloaded if older than ``max_age_s`` (0: now); concurrent
        callers share one query."""
        self._ensure_sweeper()
        if time.monotonic() - self._loaded_at <= max_age_s:
            return self.ids
        started = time.monotonic()
        async with self._lock:
            if self._loaded_at >= started:
                return self.ids
            ids = frozenset(await self.bots.bot_user_ids())
            self._loaded_at = time.monotonic()
            if ids != self.ids:
                self.ids = ids
                self.version += 1
        return self.ids

    async def runtime(self) -> Runtime:
        """This host's Runtime for bot traffic (connected on first use)."""
        if self._runtime is None:
            async with self._runtime_lock:
                if self._runtime is None:
                    from actors.runtime import Runtime

                    self._runtime = await Runtime.connect(
                        self.ctx.settings,
                        max_inflight_batches=TURN_BATCHES_IN_FLIGHT,
                        call_timeout_s=self.ctx.settings.bot_turn_timeout_s,
                    )
        return self._runtime

    def send_turn(self, turn: BotTurn) -> None:
        """Hand a turn to the conversation's bot entity, in the background (the conversation's
        mailbox never waits for a bot). The Runtime retries it through the bot host's death;
        the pending set in Redis covers this host's own death (a sweep resends it); the bot
        entity answers each trigger once."""
        self._spawn(self._send(turn, turn_to_bytes(turn), record=True))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, turn: BotTurn, raw: bytes, *, record: bool = False) -> None:
        pending = self._pending_cache()
        try:
            if record:
                await pending.add(raw, TURN_RESEND_AFTER_S)
            runtime = await self.runtime()
            await runtime.call(bot_key(turn.conversation_id), turn)
            self.turns_sent += 1
            await pending.done(raw)
        except WarblerError as exc:
            # Left in the pending set: a sweep resends it later, sooner when the bot entity
            # asked for a retry (it counts the failures and gives up by itself).
            self.turns_failed += 1
            failures = exc.details.get("turn_retry")
            if isinstance(failures, int) and failures >= 1:
                delay = TURN_RETRY_DELAYS_S[min(failures, len(TURN_RETRY_DELAYS_S)) - 1]
                logger.info(
                    "bot turn for conversation %s seq %s failed (%d); resending in %.0fs",
                    turn.conversation_id,
                    turn.seq,
                    failures,
                    delay,
                )
                with contextlib.suppress(Exception):
                    await pending.postpone(raw, delay)
            else:
                logger.warning(
                    "bot turn for conversation %s seq %s failed: %r",
                    turn.conversation_id,
                    turn.seq,
                    exc,
                )
        except Exception:
            self.turns_failed += 1
            logger.exception(
                "bot turn for conversation %s seq %s failed", turn.conversation_id, turn.seq
            )

    async def index(self, bot: Bot) -> KnowledgeIndex:
        """The bot's passages and vectors, reloaded when its ``kb_version`` moved."""
        cached = self._indexes.get(bot.id)
        if cached is None or cached.version != bot.kb_version:
            cached = await self.knowledge.load_index(bot.id, bot.kb_version, DIM)
            self._indexes[bot.id] = cached
        return cached

    async def close(self) -> None:
        """Stop background turns and the Runtime."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._runtime is not None:
            await self._runtime.close()
            self._runtime = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis, self._pending = None, None


def turn_to_bytes(turn: BotTurn) -> bytes:
    """The turn as the pending set stores it (deterministic: the member is the identity)."""
    return json.dumps(
        [
            turn.conversation_id,
            turn.seq,
            turn.sender_id,
            turn.text,
            turn.conversation_kind,
            list(turn.bot_user_ids),
            turn.sent_at,
        ],
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def turn_from_bytes(raw: bytes) -> BotTurn:
    """Inverse of ``turn_to_bytes`` (a turn stored before ``sent_at`` existed has six fields:
    it counts as sent when it is handled)."""
    cid, seq, sender, text, kind, bots, *rest = json.loads(raw)
    sent_at = float(rest[0]) if rest else 0.0
    return BotTurn(int(cid), int(seq), int(sender), str(text), str(kind), tuple(bots), sent_at)


_LINKS: dict[int, BotLink] = {}


def link_for(ctx: EntityContext) -> BotLink:
    """The host's BotLink (one per EntityContext, i.e. per host process)."""
    link = _LINKS.get(id(ctx))
    if link is None or link.ctx is not ctx:
        link = _LINKS[id(ctx)] = BotLink(ctx)
    return link
