"""Host failover: the shards of a dead pool host are served by the other hosts at once.

Ray restarts a killed host in place (``max_restarts=-1``), but its conversations wait for the
restart: a new worker process, our imports and the host's start, 2-3.5 s here, for 4.2-4.5 s
of recovery in the chaos bench. The watcher asks the GCS every ``host_failover_poll_s`` which
pool hosts Ray is restarting; for one of the committed map it commits a map without that host
(``cluster.fail_over``). Its shards go to the least loaded hosts, which activate the moved
entities from their checkpoints and SQL, as a restarted host would. Callers find the new map
when their next call to the dead host fails (Ray fails calls to a restarting actor at once)
and resend there. When Ray's restart of the host is up it holds no shards (it registered after
the failover and read the new map); the watcher gives it its share back by an ordinary move
(``cluster.readmit``).

Only a death Ray has seen starts a failover (state ``RESTARTING``: the process exited or its
node was declared dead), never a slow answer; and it begins only if the host's new
incarnation has not registered yet (``storage.shard_maps``), so the restarted host and the
heirs never both serve a shard.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import ray
from ray._private import state as ray_state

from actors import cluster
from actors.directory_store import DirectoryStore
from storage.keys import Keys
from storage.redis import connect_redis
from warbler import metrics
from warbler.config import Settings

logger = logging.getLogger(__name__)

_HISTORY = 50


@dataclass(frozen=True, slots=True)
class HostStatus:
    """What the GCS says of one host actor."""

    state: str  # ALIVE, RESTARTING, DEAD, PENDING_CREATION, ...
    restarts: int  # Ray's restart count: the incarnation a restart in progress will be


def _status(actor_id: str) -> HostStatus | None:
    info: dict[str, Any] = ray_state.actors(actor_id)
    if not info:
        return None
    return HostStatus(str(info["State"]), int(info.get("NumRestarts", 0)))


class FailoverWatcher:
    """Fails over dead pool hosts and readmits them when Ray has restarted them."""

    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url is not None
        self._settings = settings
        self._redis = connect_redis(settings.redis_url)
        self._store = DirectoryStore(self._redis, Keys(settings.namespace))
        self._ids: dict[str, str] = {}  # host name -> Ray actor id (stable across restarts)
        self.history: deque[dict[str, Any]] = deque(maxlen=_HISTORY)

    async def run(self) -> None:
        """Poll forever (the controller's task)."""
        while True:
            try:
                await self.step()
            except Exception:  # Redis or the GCS briefly away: try again next tick
                logger.warning("failover watcher: step failed", exc_info=True)
            await asyncio.sleep(self._settings.host_failover_poll_s)

    async def step(self) -> str | None:
        """One look: fail over one dead host or readmit one restarted host; what it did."""
        current, pending = await self._store.load()
        if current is None or pending is not None:
            return None  # not started, or a move under way (it handles deaths itself)
        for name in current.hosts:
            status = await self._host_status(name)
            if status is not None and status.state == "RESTARTING":
                began = time.time()
                if await cluster.fail_over(self._settings, name, status.restarts) is None:
                    continue  # refused: the restart registered first, or the last host
                self._record("failover", name, began)
                return "failover"
        for name in await self._store.failed_over():
            if name in current.all_hosts():
                await self._store.clear_failed(name)
                continue
            status = await self._host_status(name)
            if status is not None and status.state == "ALIVE":
                began = time.time()
                await cluster.readmit(self._settings, name)
                self._record("readmit", name, began)
                return "readmit"
        return None

    async def _host_status(self, name: str) -> HostStatus | None:
        actor_id = self._ids.get(name)
        if actor_id is None:
            try:
                handle = await asyncio.to_thread(
                    ray.get_actor, name, namespace=self._settings.namespace
                )
            except ValueError:
                return None  # not created yet, or stopped for good
            actor_id = self._ids[name] = handle._actor_id.hex()
        status = await asyncio.to_thread(_status, actor_id)
        if status is None or status.state == "DEAD":
            self._ids.pop(name, None)  # stopped: a host of that name later is a new actor
        return status

    def _record(self, action: str, name: str, began: float) -> None:
        metrics.FAILOVERS.child(action).inc()
        self.history.append(
            {"t": began, "action": action, "host": name, "took_s": round(time.time() - began, 3)}
        )

    async def close(self) -> None:
        """Close the Redis connection."""
        await self._redis.aclose()
