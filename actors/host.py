"""The host core: many entities in one process, fed by batches. Plain asyncio, no Ray
(``ray_host.ActorHost`` wraps it as a Ray actor; tests drive it directly).

Ownership rule (no entity is ever active on two hosts): a host activates or serves a key only
if every shard map it holds assigns the key to it. A move goes: (1) the controller records
the pending map in Redis, (2) each losing host adds the pending map to the ones it holds, so
the moving keys stop being accepted at once, then finishes their in-flight messages,
checkpoints and passivates them, (3) the controller commits the pending map in Redis, (4)
hosts adopt it. A gaining host only serves after (3), which follows (2) everywhere; a host
(re)starting in the middle loads both maps from Redis and so also refuses the moving keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from actors.bot import BotEntity
from actors.bot_link import link_for
from actors.checkpoints import Checkpointer, Loaded
from actors.context import EntityContext
from actors.conversation import ConversationEntity, create_conversation
from actors.directory import Ownership, ShardMap
from actors.directory_store import DirectoryStore
from actors.entity import Entity
from actors.mailbox import ACTIVATING, ACTIVE, GONE, PASSIVATING, Activation, Reply, as_error
from actors.messages import Request
from actors.names import NEW_CONVERSATION_KEY, parse_key
from actors.session import UserSessionEntity
from actors.wire import BatchReply, Envelope, stale_epoch
from warbler import metrics
from warbler.errors import ErrorCode, WarblerError

logger = logging.getLogger(__name__)

KINDS: dict[str, type[Entity[Any]]] = {
    ConversationEntity.kind: ConversationEntity,
    UserSessionEntity.kind: UserSessionEntity,
    BotEntity.kind: BotEntity,
}

_CHECKPOINT_CONCURRENCY = 32
_ACTIVATION_CONCURRENCY = 32
_EVICT_BATCH = 1024
# Hot checkpoints per Redis script call: bounds the time one call holds Redis (states are
# a few hundred bytes).
_HOT_BATCH = 256
_LATENCY_SAMPLES = 4096
_HOST_BATCH = metrics.HOST_BATCH.child()
_MOVED = metrics.MOVED.child()
_REDIS_CHECKPOINT = metrics.REDIS_SECONDS.child("checkpoint")


def _held_maps(current: ShardMap | None, pending: ShardMap | None) -> list[ShardMap]:
    """The maps a host judges ownership by: the committed one, and a newer pending one."""
    maps = [m for m in (current, pending) if m is not None]
    if pending is not None and current is not None and pending.epoch <= current.epoch:
        maps = [current]
    return maps


class HostCore:
    """Activation table, mailboxes, checkpoints and the ownership check of one host."""

    def __init__(self, name: str, ctx: EntityContext, directory: DirectoryStore) -> None:
        self.name = name
        self.ctx = ctx
        self._directory = directory
        self._checkpointer = Checkpointer(ctx)
        self._table: OrderedDict[str, Activation] = OrderedDict()
        self._closing: dict[str, asyncio.Future[None]] = {}
        self._dirty: dict[str, Activation] = {}
        self.ownership = Ownership(name, [])
        self._refresh_lock = asyncio.Lock()
        self._maintenance: asyncio.Task[None] | None = None
        self._io = asyncio.Semaphore(_CHECKPOINT_CONCURRENCY)
        # Bounds concurrent activations: a burst (a restart, a moved shard) must not open
        # more SQL/Redis connections than the pools hold.
        self._activating = asyncio.Semaphore(_ACTIVATION_CONCURRENCY)
        self._stopping = False
        settings = ctx.settings
        self._redis_every_events = max(1, settings.redis_checkpoint_every_events)
        self._redis_every_s = settings.redis_checkpoint_every_s
        self._sql_every_events = max(1, settings.sql_checkpoint_every_events)
        self._idle_s = settings.idle_passivate_s
        self._max_active = max(1, settings.max_active_entities)
        # Counters for stats() and the benchmark.
        self.batches = 0
        self.envelopes = 0
        self.activations = 0
        self.passivations = 0
        self.redis_checkpoints = 0
        self.sql_checkpoints = 0
        self.activation_ms: deque[float] = deque(maxlen=_LATENCY_SAMPLES)
        self.backlog = 0  # messages accepted and not yet answered, over all entities
        self.loop_lag_ms = 0.0  # how late the last upkeep tick woke up (event-loop saturation)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self, incarnation: int | None = None) -> None:
        """Start the writer, load the shard map, start checkpoint/passivation upkeep.

        ``incarnation`` (how many times Ray had restarted this host) is registered in the same
        step as the map is read: a failover of this host's previous incarnation then either
        shows in the map read here, or is refused (``storage.shard_maps``)."""
        await self.ctx.start()
        if incarnation is None:
            await self.refresh_map()
        else:
            async with self._refresh_lock:
                current, pending = await self._directory.register(self.name, incarnation)
                self._set_maps(_held_maps(current, pending))
        self._maintenance = asyncio.get_running_loop().create_task(self._upkeep())
        # ChatAI: every host resends bot turns whose sending host died (one Redis read / 3 s).
        link_for(self.ctx).start_sweeper()

    async def stop(self) -> None:
        """Passivate every entity (checkpointing each), then stop the writer."""
        self._stopping = True
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        await self.passivate_where(lambda key: True)
        await link_for(self.ctx).close()
        await self.ctx.stop()

    # --- the shard map ------------------------------------------------------------------------

    async def refresh_map(self) -> None:
        """Reload committed and pending maps from Redis (coalesced: concurrent callers share)."""
        if self._refresh_lock.locked():
            async with self._refresh_lock:
                return
        async with self._refresh_lock:
            current, pending = await self._directory.load()
            maps = _held_maps(current, pending)
            if maps and (not self.ownership.maps or maps[-1].epoch >= self.ownership.epoch):
                self._set_maps(maps)

    async def release(self, pending: ShardMap) -> int:
        """Step (2) of a move: stop serving the keys ``pending`` takes away, finish their
        in-flight messages, checkpoint and passivate them. Returns how many were passivated."""
        committed = [m for m in self.ownership.maps if m.epoch < pending.epoch][:1]
        self._set_maps([*committed, pending])
        moved = await self.passivate_where(lambda key: not self.ownership.owns(key))
        _MOVED.inc(moved)
        return moved

    async def adopt(self, committed: ShardMap) -> int:
        """Step (4): serve exactly what ``committed`` assigns to this host. Returns how many
        entities it passivated (none, unless the move it commits was never released here)."""
        if committed.epoch < self.ownership.epoch and len(self.ownership.maps) == 1:
            return 0  # an old map arriving late
        self._set_maps([committed])
        return await self.passivate_where(lambda key: not self.ownership.owns(key))

    def _set_maps(self, maps: list[ShardMap]) -> None:
        self.ownership = Ownership(self.name, maps)

    # --- batches --------------------------------------------------------------------------------

    async def handle_batch(self, epoch: int, envelopes: list[Envelope]) -> BatchReply:
        """Deliver every envelope and answer in order: a value, or a WarblerError for that
        envelope alone (STALE_EPOCH when this host does not serve the key)."""
        if epoch > self.ownership.committed_epoch:
            # The caller has seen a map committed after ours (maybe the move we hold as
            # pending): reload before judging ownership.
            await self.refresh_map()
        self.batches += 1
        self.envelopes += len(envelopes)
        _HOST_BATCH.observe(len(envelopes))
        reply = Reply(len(envelopes))
        owns = self.ownership.owns
        for index, (key, message) in enumerate(envelopes):
            if key == NEW_CONVERSATION_KEY:
                self._spawn_factory(message, reply, index)
            elif self._stopping or not owns(key):
                reply.set(index, stale_epoch(key, self.name, self.ownership.committed_epoch))
            else:
                self._deliver(key, message, reply, index)
        await reply.done
        return self.ownership.committed_epoch, reply.results

    def _deliver(self, key: str, message: Request[Any], reply: Reply, index: int) -> None:
        activation = self._table.get(key)
        if activation is None:
            try:
                kind = KINDS.get(parse_key(key)[0])
                if kind is None:
                    raise WarblerError(ErrorCode.BAD_REQUEST, f"no entity kind for key {key!r}")
            except WarblerError as exc:
                reply.set(index, exc)
                return
            closing = self._closing.get(key)
            if closing is not None:  # wait for the old activation's final checkpoint
                asyncio.get_running_loop().create_task(
                    self._deliver_after(closing, key, message, reply, index)
                )
                return
            activation = Activation(key, self._after_answer)
            self._table[key] = activation
            asyncio.get_running_loop().create_task(self._activate(activation, kind))
        elif activation.status == PASSIVATING:
            closing = self._closing[key]
            asyncio.get_running_loop().create_task(
                self._deliver_after(closing, key, message, reply, index)
            )
            return
        else:
            self._table.move_to_end(key)
        activation.last_used = time.monotonic()
        self.backlog += 1
        activation.post(message, reply, index)

    async def _deliver_after(
        self,
        closing: asyncio.Future[None],
        key: str,
        message: Request[Any],
        reply: Reply,
        index: int,
    ) -> None:
        await asyncio.shield(closing)
        if self._stopping or not self.ownership.owns(key):
            reply.set(index, stale_epoch(key, self.name, self.ownership.committed_epoch))
        else:
            self._deliver(key, message, reply, index)

    def _spawn_factory(self, message: Request[Any], reply: Reply, index: int) -> None:
        async def run() -> None:
            try:
                async with self._activating:  # same bound: it opens SQL sessions too
                    result: object = await create_conversation(self.ctx, message)
            except Exception as exc:
                result = as_error(exc, NEW_CONVERSATION_KEY)
            reply.set(index, result)

        asyncio.get_running_loop().create_task(run())

    # --- activation -----------------------------------------------------------------------------

    async def _activate(self, activation: Activation, kind: type[Entity[Any]]) -> None:
        key = activation.key
        try:
            async with self._activating:
                started = time.perf_counter()
                loaded = await self._checkpointer.load(key, hot_is_enough=kind.replays_log)
                checkpoint = (loaded.version, loaded.state) if loaded else None
                entity = await kind.restore(key, self.ctx, checkpoint)
                await entity.on_activate()
                elapsed_ms = (time.perf_counter() - started) * 1000.0
        except Exception as exc:
            error = as_error(exc, key)
            activation.status = GONE
            if self._table.get(key) is activation:
                del self._table[key]
            activation.fail_all(error)
            return
        self._activated(activation, entity, elapsed_ms, loaded)

    def _activated(
        self,
        activation: Activation,
        entity: Entity[Any],
        elapsed_ms: float | None,
        loaded: Loaded | None,
    ) -> None:
        activation.entity = entity
        if activation.status == ACTIVATING:  # else a passivation claimed it meanwhile
            activation.status = ACTIVE
        # Replayed changes make the state newer than both copies; a copy missing from one
        # store is written at the next upkeep (-1), one already there is not.
        replayed = entity.changes
        activation.redis_mark = 0 if loaded is None or loaded.in_redis else -1
        activation.sql_mark = 0 if loaded is None or loaded.in_sql else -1
        if replayed or activation.redis_mark < 0:
            self._mark_dirty(activation)
        self.activations += 1
        metrics.ACTIVATIONS.child(activation.key.partition(":")[0]).inc()
        if elapsed_ms is not None:
            self.activation_ms.append(elapsed_ms)
        activation.start()
        self._evict_if_full()

    def install(self, entity: Entity[Any]) -> None:
        """Make an entity restored elsewhere active here, as if it had just activated from an
        up-to-date checkpoint (the benchmark fills a host this way; ``key`` must be owned and
        not active)."""
        key = entity.key
        if key in self._table or not self.ownership.owns(key):
            raise WarblerError(ErrorCode.CONFLICT, f"{key} is active or not served here")
        activation = Activation(key, self._after_answer)
        activation.last_used = time.monotonic()
        self._table[key] = activation
        self._activated(activation, entity, None, Loaded(entity.snapshot()[0], b"", True, True))

    def _after_answer(self, activation: Activation) -> None:
        self.backlog -= 1
        entity = activation.entity
        if entity is not None and entity.changes != activation.redis_mark:
            self._mark_dirty(activation)

    def _mark_dirty(self, activation: Activation) -> None:
        if activation.key not in self._dirty:
            activation.dirty_since = time.monotonic()
            self._dirty[activation.key] = activation

    # --- checkpoints and passivation ----------------------------------------------------------

    async def _checkpoint(self, activation: Activation, *, durable: bool) -> None:
        await self._checkpoint_many([(activation, durable)])

    async def _checkpoint_many(self, due: list[tuple[Activation, bool]]) -> None:
        """Checkpoint each ``(activation, durable)``: every hot copy due goes to Redis in one
        script call per ``_HOT_BATCH`` (one round trip per tick, not one per entity: per-entity
        calls were a third of a host's time under continuous appends); SQL copies one by one."""
        hot: list[tuple[Activation, int, int, bytes]] = []
        cold: list[tuple[Activation, int, int, bytes]] = []
        for activation, durable in due:
            entity = activation.entity
            if entity is None:
                continue
            changes = entity.changes
            version, state = entity.snapshot()
            if changes != activation.redis_mark:
                hot.append((activation, changes, version, state))
            if durable and changes != activation.sql_mark:
                cold.append((activation, changes, version, state))
        for first in range(0, len(hot), _HOT_BATCH):
            chunk = hot[first : first + _HOT_BATCH]
            try:
                async with self._io:
                    with metrics.timed(_REDIS_CHECKPOINT):
                        await self._checkpointer.save_hot_many(
                            [(a.key, v, s) for a, _, v, s in chunk]
                        )
            except Exception:
                logger.warning(
                    "hot checkpoint of %d entities (%s, ...) failed",
                    len(chunk),
                    chunk[0][0].key,
                    exc_info=True,
                )
                continue
            for activation, changes, _, _ in chunk:
                activation.redis_mark = max(activation.redis_mark, changes)
            self.redis_checkpoints += len(chunk)
        if cold:
            await asyncio.gather(*(self._save_durable(*item) for item in cold))

    async def _save_durable(
        self, activation: Activation, changes: int, version: int, state: bytes
    ) -> None:
        async with self._io:
            await self._checkpointer.save_durable(activation.key, version, state)
        activation.sql_mark = max(activation.sql_mark, changes)
        self.sql_checkpoints += 1

    async def passivate(self, activation: Activation) -> None:
        """Finish in-flight messages, checkpoint to Redis and SQL, drop the activation."""
        if activation.status in (PASSIVATING, GONE):
            closing = self._closing.get(activation.key)
            if closing is not None:
                await asyncio.shield(closing)
            return
        self._claim(activation)
        await self._passivate_claimed(activation)

    def _claim(self, activation: Activation) -> None:
        # Synchronous, so nothing can be delivered to the activation between the decision to
        # passivate it and the mark: later messages park until it is gone.
        activation.status = PASSIVATING
        self._closing[activation.key] = asyncio.get_running_loop().create_future()

    async def _passivate_claimed(self, activation: Activation) -> None:
        key = activation.key
        try:
            await activation.quiesce()
            if activation.entity is not None:
                await activation.entity.on_passivate()
                await self._checkpoint(activation, durable=True)
        except Exception:
            # SQL stays the truth for conversations (the log is replayed) and Redis may hold
            # the hot copy: log it and let the entity go.
            logger.exception("final checkpoint of %s failed", key)
        finally:
            activation.status = GONE
            if self._table.get(key) is activation:
                del self._table[key]
            self._dirty.pop(key, None)
            self._closing.pop(key).set_result(None)
            self.passivations += 1
            metrics.PASSIVATIONS.child(key.partition(":")[0]).inc()

    async def passivate_where(self, predicate: Callable[[str], bool]) -> int:
        """Passivate every activation whose key matches ``predicate``; how many there were."""
        chosen = [a for k, a in list(self._table.items()) if predicate(k)]
        await asyncio.gather(*(self.passivate(a) for a in chosen))
        return len(chosen)

    def _evict_if_full(self) -> None:
        """Over the memory bound: passivate the least recently used idle entities."""
        excess = len(self._table) - len(self._closing) - self._max_active
        if excess <= 0:
            return
        loop = asyncio.get_running_loop()
        for activation in list(self._table.values()):  # least recently used first
            if excess <= 0:
                break
            if activation.status == ACTIVE and activation.pending == 0:
                self._claim(activation)
                loop.create_task(self._passivate_claimed(activation))
                excess -= 1

    async def _upkeep(self) -> None:
        tick = max(0.02, min(0.25, self._redis_every_s / 4))
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + tick
            await asyncio.sleep(tick)
            self.loop_lag_ms = max(0.0, (loop.time() - due) * 1000.0)
            try:
                await self._upkeep_once()
            except Exception:
                logger.exception("host %s upkeep failed", self.name)

    async def _upkeep_once(self) -> None:
        now = time.monotonic()
        due: list[tuple[Activation, bool]] = []
        for key, activation in list(self._dirty.items()):
            entity = activation.entity
            if entity is None or activation.status != ACTIVE:
                self._dirty.pop(key, None)
                continue
            pending_events = entity.changes - activation.redis_mark
            if pending_events >= self._redis_every_events or (
                now - activation.dirty_since >= self._redis_every_s
            ):
                durable = entity.changes - activation.sql_mark >= self._sql_every_events
                due.append((activation, durable))
                del self._dirty[key]
        if due:
            await self._checkpoint_many(due)
            for activation, _ in due:  # changed again while being written
                entity = activation.entity
                if entity is not None and entity.changes != activation.redis_mark:
                    self._mark_dirty(activation)
        idle: list[Activation] = []
        for activation in self._table.values():  # least recently used first
            if now - activation.last_used <= self._idle_s or len(idle) >= _EVICT_BATCH:
                break
            if activation.status == ACTIVE and activation.pending == 0:
                idle.append(activation)
        if idle:
            await asyncio.gather(*(self.passivate(a) for a in idle))
        self._evict_if_full()

    # --- introspection --------------------------------------------------------------------------

    @property
    def active_count(self) -> int:
        """Entities currently active (or activating)."""
        return len(self._table)

    def is_active(self, key: str) -> bool:
        """True if ``key`` has an activation here."""
        return key in self._table

    def collect_metrics(self) -> None:
        """Set the host's gauges (warbler.metrics calls it before each push, from its thread:
        it reads ints only)."""
        metrics.BACKLOG.child().set(self.backlog)
        metrics.LOOP_LAG.child().set(self.loop_lag_ms / 1000.0)
        passivated = dict(metrics.PASSIVATIONS.items_by_value())
        for kind, activated in metrics.ACTIVATIONS.items_by_value():
            metrics.ACTIVE.child(kind).set(activated - passivated.get(kind, 0.0))

    def stats(self) -> dict[str, Any]:
        """Counters for tests, metrics and the benchmark."""
        samples = sorted(self.activation_ms)
        return {
            "name": self.name,
            "epoch": self.ownership.epoch,
            "active": len(self._table),
            "backlog": self.backlog,
            "loop_lag_ms": round(self.loop_lag_ms, 2),
            "batches": self.batches,
            "envelopes": self.envelopes,
            "activations": self.activations,
            "passivations": self.passivations,
            "redis_checkpoints": self.redis_checkpoints,
            "sql_checkpoints": self.sql_checkpoints,
            "writer_batches": self.ctx.writer.batches,
            "writer_appended": self.ctx.writer.appended,
            "activation_ms_p50": samples[len(samples) // 2] if samples else None,
            "activation_ms_p99": samples[int(len(samples) * 0.99)] if samples else None,
        }


__all__ = ["ACTIVATING", "HostCore", "KINDS"]
