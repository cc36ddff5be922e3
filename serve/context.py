"""Everything one gateway replica holds: connections to SQL, Redis and the actor runtime, and
the handlers built on them. Built once per replica from Settings and closed on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from functools import partial

import redis.asyncio as aioredis

from actors import Runtime
from actors.session import PRESENCE_TTL_S
from serve.batching import CallCoalescer
from serve.delivery.hub import DeliveryHub
from serve.handlers.accounts import AccountsHandler
from serve.handlers.chat import ChatHandler
from serve.handlers.search import SearchHandler
from serve.ratelimit import AbuseThrottle
from serve.reload import FLUSH_S, ReloadCoordinator, serve_drain_probe
from serve.revocations import Revocation, Revocations
from serve.tokens import TokenSigner
from storage import (
    ConversationStore,
    Database,
    EventBus,
    Keys,
    PresenceCache,
    ThrottleCache,
    UserStore,
    connect_redis,
)
from storage.search import SearchStore
from warbler.config import Settings
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import CloseCode, ReconnectFrame, dump_frame

logger = logging.getLogger(__name__)

# Sockets renew their presence this often (the session entity's TTL is three times longer).
PRESENCE_RENEW_S = PRESENCE_TTL_S / 3
# On shutdown, time for the `reconnect` frames to leave before the sockets close.
DRAIN_FLUSH_S = FLUSH_S


def _close_revoked(hub: DeliveryHub, revocation: Revocation) -> None:
    """Close this replica's sockets of a logged-out session (4403: the client stops)."""
    for conn in hub.connections:
        if revocation.concerns(conn.user_id, conn.session_id, conn.token_issued_at):
            conn.request_close(CloseCode.REVOKED)


async def _restore(runtime: Runtime, revocations: Revocations) -> None:
    try:
        await runtime.restore_map()
    except Exception:
        logger.warning("cannot restore the shard map", exc_info=True)
    try:
        await revocations.resync()
    except Exception:
        logger.warning("cannot restore the revocations", exc_info=True)


def replica_name() -> str:
    """A short id for this replica (the Serve replica tag when inside Serve)."""
    try:
        from ray import serve

        tag = str(serve.get_replica_context().replica_tag)
    except Exception:  # not inside a Serve replica (tests, scripts)
        tag = uuid.uuid4().hex[:12]
    return tag[-48:]


@dataclass
class GatewayContext:
    """The services of one replica; routes reach them through ``serve.deps``."""

    settings: Settings
    replica_id: str
    db: Database
    redis: aioredis.Redis
    runtime: Runtime
    calls: CallCoalescer
    hub: DeliveryHub
    accounts: AccountsHandler
    chat: ChatHandler
    search: SearchHandler
    reload: ReloadCoordinator
    revocations: Revocations
    started_at: float = field(default_factory=time.time)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(cls, settings: Settings, replica_id: str | None = None) -> GatewayContext:
        """Connect everything (the schema must already be migrated: ``warbler up`` does it)."""
        if not settings.redis_url:
            raise WarblerError(ErrorCode.CONFIG, "the gateway needs settings.redis_url")
        db = Database.from_settings(settings)
        redis = connect_redis(settings.redis_url)
        keys = Keys(settings.namespace)
        runtime = await Runtime.connect(settings)
        calls = CallCoalescer(runtime.call_many, max_batch=settings.batch_max)
        calls.start()
        bus = EventBus(redis, keys)
        chat = ChatHandler(
            settings,
            calls,
            runtime,
            ConversationStore(db),
            PresenceCache(redis, keys),
            bus,
            keys,
        )
        # Started (below) once the hub exists: only then can a revocation close sockets.
        revocations = Revocations(
            redis, keys, settings.access_token_ttl_s, lambda r: _close_revoked(hub, r)
        )
        hub = DeliveryHub(
            bus,
            keys,
            read_log=chat.read_log,
            load_conversations=chat.load_conversations,
            page_limit=settings.history_page_max,
            # Redis came back, maybe empty (a server without persistence): put the shard map
            # and the revocations back, or restarted hosts and new replicas would find no map
            # and accept logged-out sessions' tokens.
            on_reconnect=partial(_restore, runtime, revocations),
        )
        await hub.start()
        signer = TokenSigner(settings.resolved_secret_key(), settings.access_token_ttl_s)
        replica_id = replica_id or replica_name()
        # Only haproxy drops older sockets on a reload; Serve's Python proxy keeps them.
        reload = ReloadCoordinator(
            bus,
            keys,
            replica_id,
            lambda: hub.connections,
            window_s=settings.reload_reconnect_window_s,
            announce=settings.use_haproxy,
            rebalance=settings.use_haproxy,
            drain_probe=serve_drain_probe(),
        )
        ctx = cls(
            settings=settings,
            replica_id=replica_id,
            db=db,
            redis=redis,
            runtime=runtime,
            calls=calls,
            hub=hub,
            accounts=AccountsHandler(
                UserStore(db),
                signer,
                settings.refresh_token_ttl_s,
                revocations,
                AbuseThrottle(ThrottleCache(redis, keys), settings),
            ),
            chat=chat,
            search=SearchHandler(settings, SearchStore(db)),
            reload=reload,
            revocations=revocations,
        )
        ctx._tasks.append(asyncio.get_running_loop().create_task(ctx._renew_presence()))
        await revocations.start()
        await reload.start()
        logger.info("gateway replica %s ready", ctx.replica_id)
        return ctx

    async def close(self) -> None:
        """Tell every socket still here to reconnect elsewhere, then close the runtime and
        connections. (A drain Serve announced has spread most sockets out already: see
        serve/reload.py; this is the fallback when no drain was seen.)"""
        await self.reload.close()
        await self.revocations.close()
        conns = [c for c in self.hub.connections if not c.closed]
        if conns:
            logger.info(
                "replica %s closing: %d sockets told to reconnect", self.replica_id, len(conns)
            )
            frame = dump_frame(ReconnectFrame(reason="draining"))
            for conn in conns:
                conn.send(frame)
                conn.request_close(CloseCode.SERVICE_RESTART)
            await asyncio.sleep(DRAIN_FLUSH_S)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.hub.close()
        await self.calls.close()
        with contextlib.suppress(Exception):
            await self.runtime.close()
        await self.redis.aclose()
        await self.db.close()

    def check(self) -> None:
        """Raise if a background loop of the replica died (Serve then replaces the replica)."""
        for name, task in (("delivery hub", self.hub.task), ("call batcher", self.calls.task)):
            if task is None or task.done():
                raise RuntimeError(f"the {name} of replica {self.replica_id} stopped")

    async def _renew_presence(self) -> None:
        # One batched round of ConnectDevice keepalives for every socket of the replica.
        while True:
            await asyncio.sleep(PRESENCE_RENEW_S)
            conns = self.hub.connections
            results = await asyncio.gather(
                *(
                    self.chat.device_connected(c.user_id, c.device_id, self.replica_id)
                    for c in conns
                ),
                return_exceptions=True,
            )
            failed = sum(isinstance(r, BaseException) for r in results)
            if failed:
                logger.warning("presence renewal failed for %d of %d sockets", failed, len(conns))
