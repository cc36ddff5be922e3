"""Starting, finding and rebalancing the host actors; the one place that creates them.

Hosts are named, detached Ray actors in namespace ``settings.namespace``. Every change of
placement goes through ``_move`` (the protocol is described in ``actors.host``):

1. record the new map as *pending* in Redis (compare-and-set: one move at a time);
2. ``release`` it on every host: each stops accepting the keys it loses, finishes their
   in-flight messages, checkpoints and passivates them;
3. commit the pending map in Redis (callers now route by it);
4. ``adopt`` it on every host (the gaining hosts start serving).

A controller that dies mid-move leaves the pending map in Redis; the next call here finishes
that move first (steps 2-4 are idempotent).

``fail_over`` is the one change without step 2: the host that loses shards is dead (Ray is
restarting it), and the hosts that gain them lose nothing (see ``actors.failover``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray.exceptions import RayActorError

from actors.directory import (
    ShardMap,
    initial_map,
    with_host_added,
    with_host_removed,
    with_pin,
    without_pin,
)
from actors.directory_store import DirectoryStore
from actors.names import AUTOSCALER_NAME, dedicated_host_name, pool_host_name
from actors.ray_host import ActorHost
from storage.keys import Keys
from storage.redis import connect_redis
from warbler.config import Settings
from warbler.errors import ErrorCode, WarblerError

logger = logging.getLogger(__name__)

HOST_RESOURCE = "warbler_host"
_RELEASE_ATTEMPTS = 3


@contextlib.asynccontextmanager
async def _directory(settings: Settings) -> AsyncIterator[DirectoryStore]:
    if not settings.redis_url:
        raise WarblerError(ErrorCode.CONFIG, "the cluster needs settings.redis_url")
    redis = connect_redis(settings.redis_url)
    try:
        yield DirectoryStore(redis, Keys(settings.namespace))
    finally:
        await redis.aclose()


def create_host(settings: Settings, name: str, *, host_resource: float = 1.0) -> Any:
    """Start (or find) host actor ``name``. ``host_resource`` is how much of the custom
    resource ``warbler_host`` it needs (0: none, for clusters that do not declare it)."""
    options: dict[str, Any] = {
        "name": name,
        "namespace": settings.namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        "max_task_retries": 0,
        "scheduling_strategy": "SPREAD",
        "num_cpus": settings.host_cpus,
        "max_concurrency": 10_000,
    }
    if host_resource > 0:
        options["resources"] = {HOST_RESOURCE: host_resource}
    if settings.extra_ray_env:
        options["runtime_env"] = {"env_vars": dict(settings.extra_ray_env)}
    return ray.remote(ActorHost).options(**options).remote(settings, name)


def get_host(settings: Settings, name: str) -> Any:
    """The handle of running host ``name`` (ValueError if there is none)."""
    return ray.get_actor(name, namespace=settings.namespace)


async def start_hosts(
    settings: Settings, n: int | None = None, *, host_resource: float = 1.0
) -> list[Any]:
    """Start (or find) the pool hosts and make sure a shard map exists. With an existing map
    (a restarted driver) the map's hosts are started and the map is kept; otherwise ``n``
    hosts (default ``settings.num_hosts``) share the shards round-robin."""
    async with _directory(settings) as store:
        current, pending = await store.load()
        if current is None:
            count = n if n is not None else settings.num_hosts
            names = [pool_host_name(i) for i in range(count)]
        else:
            names = current.all_hosts()
        handles = [create_host(settings, name, host_resource=host_resource) for name in names]
        await asyncio.gather(*(h.ping.remote() for h in handles))
        if current is None:
            created = initial_map(names, settings.num_shards)
            if not await store.create(created):
                logger.info("another controller created the shard map first")
            current, pending = await store.load()
            assert current is not None
        if pending is not None:
            await _finish(settings, store, current, pending)
            current = pending
        await _adopt_everywhere(settings, current, current.all_hosts())
        return handles


async def add_host(settings: Settings, *, host_resource: float = 1.0) -> str:
    """Start one more pool host and move an even share of shards to it; returns its name."""
    async with _directory(settings) as store:
        current = await _settled(settings, store)
        taken = {int(h.rsplit("-", 1)[1]) for h in current.hosts if h.startswith("host-")}
        name = pool_host_name(max(taken, default=-1) + 1)
        handle = create_host(settings, name, host_resource=host_resource)
        await handle.ping.remote()
        await _move(settings, store, current, with_host_added(current, name))
        return name


async def remove_host(settings: Settings, name: str) -> None:
    """Move pool host ``name``'s shards to the others (drained, checkpointed), then stop it."""
    async with _directory(settings) as store:
        current = await _settled(settings, store)
        await _move(settings, store, current, with_host_removed(current, name))
        await _kill(settings, name)
        await store.clear_failed(name)


async def fail_over(settings: Settings, name: str, restarts: int) -> ShardMap | None:
    """Commit a map that gives dead pool host ``name``'s shards to the other pool hosts at once,
    unless Ray's restart of it as incarnation ``restarts`` has already registered, a move is
    under way, or it is the last pool host. Returns the new map, or None if refused."""
    async with _directory(settings) as store:
        current, pending = await store.load()
        if current is None or pending is not None or name not in current.hosts:
            return None
        if len(current.hosts) < 2:
            return None
        new = with_host_removed(current, name)
        if not await store.begin_failover(current.epoch, new, name, restarts):
            return None
        # No release step: the heirs only gain shards, and the dead host serves nothing (its
        # next incarnation registers and reads this map, or a later one).
        await store.commit(new)
        logger.warning(
            "failover: host %s died; its %d shards moved to the others (epoch %d -> %d)",
            name,
            len(current.shards_of(name)),
            current.epoch,
            new.epoch,
        )
        await _adopt_everywhere(settings, new, list(new.all_hosts()))
        return new


async def readmit(settings: Settings, name: str) -> ShardMap | None:
    """Give a failed-over host that is back (restarted by Ray) its share of shards again, by an
    ordinary move. Returns the new map, or None if it serves shards already."""
    async with _directory(settings) as store:
        current = await _settled(settings, store)
        if name in current.all_hosts():
            await store.clear_failed(name)
            return None
        await get_host(settings, name).ping.remote()
        new = with_host_added(current, name)
        await _move(settings, store, current, new)
        await store.clear_failed(name)
        logger.info(
            "failover: host %s is back and serves %d shards", name, len(new.shards_of(name))
        )
        return new


async def pin_entity(settings: Settings, key: str, *, host_resource: float = 1.0) -> str:
    """Give entity ``key`` a host of its own (one Ray actor for it alone); returns its name."""
    async with _directory(settings) as store:
        current = await _settled(settings, store)
        name = dedicated_host_name(key)
        if current.pins.get(key) == name:
            return name
        handle = create_host(settings, name, host_resource=host_resource)
        await handle.ping.remote()
        await _move(settings, store, current, with_pin(current, key, name))
        return name


async def unpin_entity(settings: Settings, key: str) -> None:
    """Move entity ``key`` back to its shard's pool host and stop its dedicated host."""
    async with _directory(settings) as store:
        current = await _settled(settings, store)
        name = current.pins.get(key)
        await _move(settings, store, current, without_pin(current, key))
        if name is not None:
            await _kill(settings, name)


async def current_map(settings: Settings) -> ShardMap | None:
    """The committed shard map, or None."""
    async with _directory(settings) as store:
        current, _ = await store.load()
        return current


async def pool_view(settings: Settings) -> tuple[ShardMap | None, list[str]]:
    """The committed map and the pool hosts a failover took shards from that have not been
    readmitted yet (one Redis connection for both)."""
    async with _directory(settings) as store:
        current, _ = await store.load()
        return current, await store.failed_over()


async def shutdown_hosts(settings: Settings) -> None:
    """Passivate every entity (checkpointing it), stop every host, delete the shard map."""
    # The autoscaler first: it would otherwise see a pool below min_hosts and grow it back.
    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor(AUTOSCALER_NAME, namespace=settings.namespace), no_restart=True)
    async with _directory(settings) as store:
        current, pending = await store.load()
        # Failed-over hosts are in no map until readmitted: stop them too.
        names: set[str] = set(await store.failed_over())
        for shard_map in (current, pending):
            if shard_map is not None:
                names.update(shard_map.all_hosts())
        for name in sorted(names):
            await _kill(settings, name, graceful=True)
        await store.delete()


# --- the move protocol ------------------------------------------------------------------------


async def _settled(settings: Settings, store: DirectoryStore) -> ShardMap:
    """The committed map, after finishing a move a dead controller left pending."""
    current, pending = await store.load()
    if current is None:
        raise WarblerError(ErrorCode.UNAVAILABLE, "no shard map: start the hosts first")
    if pending is not None and pending.epoch > current.epoch:
        await _finish(settings, store, current, pending)
        return pending
    return current


async def _move(
    settings: Settings, store: DirectoryStore, current: ShardMap, new: ShardMap
) -> None:
    await store.begin(current.epoch, new)
    logger.info("shard move: epoch %d -> %d", current.epoch, new.epoch)
    try:
        await _release_everywhere(settings, current, new)
    except Exception:
        logger.exception("shard move to epoch %d failed; rolling back", new.epoch)
        await store.abort(new)
        await _adopt_everywhere(settings, current, current.all_hosts())
        raise
    await store.commit(new)
    await _adopt_everywhere(settings, new, [*new.all_hosts(), *current.all_hosts()])


async def _finish(
    settings: Settings, store: DirectoryStore, current: ShardMap, pending: ShardMap
) -> None:
    logger.warning("finishing the shard move to epoch %d a controller left", pending.epoch)
    await _release_everywhere(settings, current, pending)
    await store.commit(pending)
    await _adopt_everywhere(settings, pending, [*pending.all_hosts(), *current.all_hosts()])


async def _release_everywhere(settings: Settings, current: ShardMap, new: ShardMap) -> None:
    payload = new.to_json()

    async def release(name: str) -> None:
        for attempt in range(1, _RELEASE_ATTEMPTS + 1):
            try:
                moved = await get_host(settings, name).release.remote(payload)
                logger.info("host %s released %d entities for epoch %d", name, moved, new.epoch)
                return
            except RayActorError:
                # It died mid-release; restarted, it loads the pending map and serves none of
                # the moving keys, so releasing again finishes quickly.
                if attempt == _RELEASE_ATTEMPTS:
                    raise
                await asyncio.sleep(0.5 * attempt)

    await asyncio.gather(*(release(name) for name in current.all_hosts()))


async def _adopt_everywhere(settings: Settings, committed: ShardMap, names: list[str]) -> None:
    payload = committed.to_json()

    async def adopt(name: str) -> None:
        try:
            await get_host(settings, name).adopt.remote(payload)
        except (RayActorError, ValueError):
            # A host that is down loads the committed map from Redis when it comes back.
            logger.warning("host %s missed epoch %d; it will load it", name, committed.epoch)

    await asyncio.gather(*(adopt(name) for name in dict.fromkeys(names)))


async def _kill(settings: Settings, name: str, *, graceful: bool = False) -> None:
    try:
        handle = get_host(settings, name)
    except ValueError:
        return
    if graceful:
        try:
            await handle.shutdown.remote()
        except RayActorError:
            logger.warning("host %s did not shut down cleanly", name)
    ray.kill(handle, no_restart=True)
