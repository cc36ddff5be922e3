"""``ActorHost``: the Ray actor (one OS process) that hosts many entities.

A thin async wrapper over ``HostCore``: its own database engine, Redis client and
group-commit writer, built on first use (``__init__`` cannot await, and after a crash Ray
re-runs ``__init__`` in the new process). Created only by ``actors.cluster``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
import uuid
from typing import Any

import ray
from ray._private import state as ray_state

from actors.context import EntityContext
from actors.conversation import ConversationEntity, ConversationState
from actors.directory import ShardMap
from actors.directory_store import DirectoryStore
from actors.host import HostCore
from actors.names import conv_key
from actors.wire import BatchReply, Envelope
from storage.db import Database
from storage.redis import connect_redis
from storage.writer import SeqCounter
from warbler import metrics
from warbler.config import Settings
from warbler.errors import ErrorCode, WarblerError
from warbler.logs import setup_logging

logger = logging.getLogger(__name__)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _process_started_at() -> float:
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as f:
        boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _incarnation() -> int | None:
    """How many times Ray has restarted this actor (0: the first start); None outside Ray.
    The failover watcher reads the same number from the GCS (``actors.failover``)."""
    actor_id = ray.get_runtime_context().get_actor_id()
    if actor_id is None:
        return None
    info: dict[str, Any] = ray_state.actors(actor_id)
    return int(info.get("NumRestarts", 0)) if info else None


class ActorHost:
    """One host process: takes batches of envelopes for many entities (see ``HostCore``)."""

    def __init__(self, settings: Settings, name: str) -> None:
        if not settings.redis_url:
            raise WarblerError(ErrorCode.CONFIG, "hosts need settings.redis_url")
        self._settings = settings
        self._name = name
        self._init_at = time.time()
        self._ready_at = 0.0
        self._core: HostCore | None = None
        self._starting: asyncio.Task[HostCore] | None = None
        setup_logging(settings, f"host:{name}")
        metrics.configure(settings)
        # Start now, not on the first call: after a kill -9 the callers learn of the death
        # ~1 s later (chaos bench), and the start (engine, Redis, shard map: 0.1-0.7 s) runs
        # meanwhile instead of after. Ray runs an async actor's __init__ in its event loop.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            pass  # no loop (not under Ray): the first call starts it
        else:
            self._starting = loop.create_task(self._start())
            self._starting.add_done_callback(self._log_start_failure)

    def _log_start_failure(self, task: asyncio.Task[HostCore]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.warning("host %s did not start; the next call retries", self._name,
                           exc_info=task.exception())

    async def _ready(self) -> HostCore:
        if self._core is not None:
            return self._core
        starting = self._starting
        if starting is None or (
            starting.done() and (starting.cancelled() or starting.exception() is not None)
        ):
            # Never started, or the start failed (SQL or Redis down at the time): try again.
            starting = self._starting = asyncio.ensure_future(self._start())
        return await asyncio.shield(starting)

    async def _start(self) -> HostCore:
        settings = self._settings
        assert settings.redis_url is not None
        db = Database.from_settings(settings)
        redis = connect_redis(settings.redis_url)
        ctx = EntityContext.build(settings, db, redis)
        core = HostCore(self._name, ctx, DirectoryStore(redis, ctx.keys))
        await core.start(await asyncio.to_thread(_incarnation))
        self._core = core
        metrics.add_collector(core.collect_metrics)
        self._ready_at = time.time()
        # Restart timing for operators: a restarted host is unavailable from the kill to here.
        started = _process_started_at()
        logger.info(
            "host %s ready: process started %.2fs before __init__, ready %.2fs after it",
            self._name, self._init_at - started, self._ready_at - self._init_at,
        )
        return core

    async def handle_batch(self, epoch: int, envelopes: list[Envelope]) -> BatchReply:
        """Deliver a batch; results in order (see ``HostCore.handle_batch``)."""
        core = await self._ready()
        return await core.handle_batch(epoch, envelopes)

    async def release(self, pending_json: bytes) -> int:
        """Step (2) of a shard move (see ``HostCore.release``)."""
        core = await self._ready()
        return await core.release(ShardMap.from_json(pending_json))

    async def adopt(self, committed_json: bytes) -> int:
        """Step (4) of a shard move (see ``HostCore.adopt``)."""
        core = await self._ready()
        return await core.adopt(ShardMap.from_json(committed_json))

    async def ping(self) -> dict[str, Any]:
        """Ready check once the host has started: name, pid, node, epoch, and when (wall clock) the
        process started, ``__init__`` ran and the host became ready (restart timing)."""
        core = await self._ready()
        return {
            "name": self._name,
            "pid": os.getpid(),
            # Which Ray node it runs on (multi-node tests: did the new node get the host?).
            "node_id": ray.get_runtime_context().get_node_id(),
            "epoch": core.ownership.epoch,
            "process_started_at": _process_started_at(),
            "init_at": self._init_at,
            "ready_at": self._ready_at,
        }

    async def stats(self) -> dict[str, Any]:
        """Counters plus the process's resident memory."""
        core = await self._ready()
        return {**core.stats(), "pid": os.getpid(), "rss_bytes": _rss_bytes()}

    async def is_active(self, key: str) -> bool:
        """True if entity ``key`` is active here (tests: no entity on two hosts)."""
        core = await self._ready()
        return core.is_active(key)

    async def passivate_all(self) -> int:
        """Checkpoint and passivate every entity; how many there were."""
        core = await self._ready()
        return await core.passivate_where(lambda key: True)

    async def clear_stats(self) -> None:
        """Forget the activation latency samples (the benchmark measures one phase)."""
        core = await self._ready()
        core.activation_ms.clear()

    async def bench_fill(self, first_id: int, count: int, members: tuple[int, int]) -> int:
        """Diagnostic for ``loadtest.actor_bench``: install ``count`` direct conversations
        ``conv:<first_id + i>`` (two members, a few recent ids) from one msgpack checkpoint,
        through ``ConversationState.load`` as activation does, minus the I/O. Returns the
        process's RSS growth in bytes."""
        core = await self._ready()
        a, b = members
        template = ConversationState(
            conversation_id=0,
            kind="direct",
            title="",
            members={a: "member", b: "member"},
            counter=SeqCounter(3),
            committed_seq=3,
            recent={(a, uuid.uuid4().hex): 2, (b, uuid.uuid4().hex): 3},
        ).dump()
        gc.collect()
        before = _rss_bytes()
        for i in range(count):
            state = ConversationState.load(template)
            state.conversation_id = first_id + i
            core.install(ConversationEntity(conv_key(first_id + i), core.ctx, state))
        gc.collect()
        return _rss_bytes() - before

    async def shutdown(self) -> None:
        """Passivate everything and stop the writer (before the actor is killed)."""
        if self._core is not None:
            await self._core.stop()
            await self._core.ctx.db.close()
