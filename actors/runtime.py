"""The runtime the gateway uses: route calls to entities, batched, with transparent retries.

``call(key, message)`` finds the host serving ``key`` in the shard map, hands the envelope to
that host's ``HostChannel`` (one Ray call per host per window) and retries, with bounded
backoff until a deadline, when the answer is STALE_EPOCH (the map moved: reload it from Redis)
or the host died or is restarting (Ray restarts it). Retrying is safe because every command
that changes state is idempotent (``client_msg_id`` / ``op_id``).

Calls are typed by their message: ``call(key, Append(...))`` returns a ``MessageEvent``
because ``Append`` is a ``Request[MessageEvent]``. This is the one place an answer is checked
against that declaration (``_reply``): anything else is a bug in an entity, answered INTERNAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import ray
import redis.asyncio as aioredis
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from actors.batcher import HostChannel
from actors.directory import ShardMap
from actors.directory_store import DirectoryStore
from actors.messages import Request
from actors.wire import Redirect
from storage.keys import Keys
from storage.redis import connect_redis
from warbler.config import Settings
from warbler.errors import ErrorCode, WarblerError

logger = logging.getLogger(__name__)

R = TypeVar("R")

_HOST_DOWN = (RayActorError, ActorUnavailableError)
_BACKOFF_FIRST_S = 0.01
_BACKOFF_MAX_S = 0.25
_REFRESH_MIN_INTERVAL_S = 0.005
_MAX_REDIRECTS = 4
# Holds the place of a reply in call_many while its call is retried (never returned).
_RETRYING = WarblerError(ErrorCode.UNAVAILABLE, "retrying")


class Runtime:
    """Routes and batches calls to entities (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis,
        *,
        max_inflight_batches: int = 2,
        call_timeout_s: float = 15.0,
    ) -> None:
        self.settings = settings
        self._redis = redis
        self._directory = DirectoryStore(redis, Keys(settings.namespace))
        self._map: ShardMap | None = None
        self._channels: dict[str, HostChannel] = {}
        self._handles: dict[str, Any] = {}
        self._max_inflight = max_inflight_batches
        self._timeout_s = call_timeout_s
        self._refresh_lock = asyncio.Lock()
        self._refreshed_at = 0.0
        self._refresh_task: asyncio.Task[None] | None = None
        self.retries = 0

    @classmethod
    async def connect(
        cls,
        settings: Settings,
        *,
        max_inflight_batches: int = 2,
        call_timeout_s: float = 15.0,
    ) -> Runtime:
        """A runtime for the cluster of ``settings.namespace`` (inside a Ray driver or worker;
        the hosts and the shard map must exist: ``cluster.start_hosts``)."""
        if not settings.redis_url:
            raise WarblerError(ErrorCode.CONFIG, "the runtime needs settings.redis_url")
        runtime = cls(
            settings,
            connect_redis(settings.redis_url),
            max_inflight_batches=max_inflight_batches,
            call_timeout_s=call_timeout_s,
        )
        await runtime.refresh(force=True)
        if runtime._map is None:
            await runtime.close()
            raise WarblerError(
                ErrorCode.UNAVAILABLE, f"no shard map in namespace {settings.namespace!r}"
            )
        return runtime

    @property
    def epoch(self) -> int:
        """The epoch of the shard map this runtime routes by."""
        return self._map.epoch if self._map is not None else 0

    @property
    def shard_map(self) -> ShardMap | None:
        """The shard map this runtime routes by."""
        return self._map

    # --- calls ----------------------------------------------------------------------------------

    async def call(self, key: str, message: Request[R]) -> R:
        """Deliver one message and return its reply; a failure raises its WarblerError."""
        result = _reply(message, await self._call(key, message))
        if isinstance(result, WarblerError):
            raise result
        return result

    async def call_many(self, calls: Sequence[tuple[str, Request[R]]]) -> list[R | WarblerError]:
        """Deliver many messages (batched per host); replies in order, a WarblerError in place
        of each that failed."""
        submitted = [self._submit(key, message) for key, message in calls]
        results: list[R | WarblerError] = []
        retry: list[int] = []
        for index, (_, future) in enumerate(submitted):
            # One await per pending future (not asyncio.wait, which adds and removes a
            # callback on every future): a batch's futures resolve together, so after the
            # first of them the rest are already done.
            if not future.done():
                with contextlib.suppress(Exception):
                    await future
            exc = future.exception()
            value = exc if exc is not None else future.result()
            if _needs_retry(value) or isinstance(value, Redirect):
                retry.append(index)
                results.append(_RETRYING)
            elif isinstance(value, BaseException) and not isinstance(value, WarblerError):
                raise value
            else:
                results.append(_reply(calls[index][1], value))
        if retry:
            again = await asyncio.gather(
                *(self._call(calls[i][0], calls[i][1], first=submitted[i]) for i in retry)
            )
            for index, value in zip(retry, again, strict=True):
                results[index] = _reply(calls[index][1], value)
        return results

    def _submit(self, key: str, message: Request[Any]) -> tuple[str, asyncio.Future[object]]:
        shard_map = self._map
        assert shard_map is not None
        host = shard_map.owner(key)
        return host, self._channel(host).submit(key, message)

    async def _call(
        self,
        key: str,
        message: Request[Any],
        *,
        first: tuple[str, asyncio.Future[object]] | None = None,
    ) -> object:
        """One call with retries; returns the result or the final WarblerError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        delay = _BACKOFF_FIRST_S
        redirects = 0
        submitted = first
        while True:
            if submitted is None:
                submitted = self._submit(key, message)
            host, future = submitted
            try:
                outcome: object = await asyncio.wait_for(
                    asyncio.shield(future), max(0.0, deadline - loop.time())
                )
            except _HOST_DOWN as exc:
                outcome = exc
            except TimeoutError:
                return WarblerError(ErrorCode.UNAVAILABLE, f"{key}: no answer in time")
            submitted = None
            if isinstance(outcome, ActorDiedError):
                self._forget_host(host)  # maybe removed or re-created: look it up again
            if isinstance(outcome, Redirect):
                redirects += 1
                if redirects > _MAX_REDIRECTS:
                    return WarblerError(ErrorCode.INTERNAL, f"{key}: too many redirects")
                key, message = outcome.key, outcome.message
                continue
            if not _needs_retry(outcome):
                return outcome
            self.retries += 1
            stale = isinstance(outcome, WarblerError)
            before = self.epoch
            await self.refresh(force=not stale)
            if stale and self.epoch > before:
                continue  # the map moved: the new owner answers at once
            if loop.time() + delay > deadline:
                logger.warning("giving up on %s after retries: %r", key, outcome)
                return WarblerError(ErrorCode.UNAVAILABLE, f"{key}: host unavailable ({outcome!r})")
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, _BACKOFF_MAX_S)

    # --- the shard map and the hosts --------------------------------------------------------------

    async def refresh(self, *, force: bool = False) -> None:
        """Reload the shard map from Redis (coalesced with concurrent refreshes; without
        ``force``, skipped if it was reloaded a few ms ago)."""
        if self._refresh_lock.locked():
            async with self._refresh_lock:
                return
        async with self._refresh_lock:
            if not force and time.monotonic() - self._refreshed_at < _REFRESH_MIN_INTERVAL_S:
                return
            current, _ = await self._directory.load()
            self._refreshed_at = time.monotonic()
            if current is None or (self._map is not None and current.epoch < self._map.epoch):
                return
            for name in current.all_hosts():
                if name not in self._handles:
                    try:
                        self._handles[name] = await asyncio.to_thread(
                            ray.get_actor, name, namespace=self.settings.namespace
                        )
                    except ValueError:
                        logger.warning("host %s is in the map but not running yet", name)
            self._map = current

    def missing_hosts(self) -> list[str]:
        """The hosts of the shard map this runtime has no handle on (not running yet, or
        forgotten after a failed call until the next reload)."""
        if self._map is None:
            return []
        return [name for name in self._map.all_hosts() if name not in self._handles]

    async def restore_map(self) -> bool:
        """Write the map this runtime routes by back to Redis if Redis lost it (a restart
        without persistence): hosts that restart and replicas that start read it there.
        Never overwrites a stored map. True if it was written."""
        if self._map is None:
            return False
        restored = await self._directory.create(self._map)
        if restored:
            logger.warning("the shard map was missing from Redis; restored epoch %s", self.epoch)
        return restored

    def _seen_epoch(self, epoch: int) -> None:
        # A host knows a newer map: reload in the background (once at a time).
        if epoch > self.epoch and self._refresh_task is None:
            task = asyncio.get_running_loop().create_task(self.refresh())
            self._refresh_task = task
            task.add_done_callback(lambda _: setattr(self, "_refresh_task", None))

    def _forget_host(self, host: str) -> None:
        self._handles.pop(host, None)
        self._channels.pop(host, None)

    def _channel(self, host: str) -> HostChannel:
        channel = self._channels.get(host)
        if channel is None:
            handle = self._handles.get(host)
            if handle is None:
                handle = _MissingHost(host)
            channel = HostChannel(
                host,
                handle,
                lambda: self.epoch,
                self._seen_epoch,
                window_s=self.settings.batch_window_ms / 1000.0,
                max_batch=self.settings.batch_max,
                max_inflight=self._max_inflight,
                # A caller gives up at its deadline: a batch need not outlive it.
                batch_timeout_s=self._timeout_s,
            )
            if not isinstance(handle, _MissingHost):
                self._channels[host] = channel
        return channel

    async def close(self) -> None:
        """Wait for batches in flight and close the Redis connection."""
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        await self._redis.aclose()


def _reply(message: Request[R], value: object) -> R | WarblerError:
    """``value`` as the reply ``message`` declares, or the WarblerError the call failed with;
    any other answer is an entity's bug, turned into INTERNAL here (the one check)."""
    # The class read from Request[R] at class creation (list for list[X]: items unchecked).
    reply_type: type[R] = type(message).reply_type
    if isinstance(value, reply_type):
        return value
    if isinstance(value, WarblerError):
        return value
    logger.error("%s was answered with %s, not %s", type(message).__name__, type(value), reply_type)
    return WarblerError(
        ErrorCode.INTERNAL,
        f"{type(message).__name__} was answered with {type(value).__name__}, "
        f"not {reply_type.__name__}",
    )


def _needs_retry(value: object) -> bool:
    if isinstance(value, WarblerError):
        return value.code == ErrorCode.STALE_EPOCH
    return isinstance(value, _HOST_DOWN)


class _MissingHost:
    """Stands in for a host the map names but Ray does not know yet: every call fails as if
    the host were restarting, so the caller backs off and reloads."""

    def __init__(self, name: str) -> None:
        self.handle_batch = self
        self._name = name

    def remote(self, *args: object) -> asyncio.Future[object]:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        future.set_exception(ActorUnavailableError(f"host {self._name} is not running", None))
        return future
