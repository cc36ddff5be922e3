"""The event bus: Redis pub/sub between conversation entities and gateways.

Best effort by design (pub/sub drops what nobody hears); clients close gaps by seq from SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from types import TracebackType

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from storage.keys import Keys

logger = logging.getLogger(__name__)

_POLL_S = 1.0
# Every subscriber stays subscribed to this channel (nobody publishes on it). redis-py runs a
# health check (PING, then *reads* the PONG) inside SUBSCRIBE when a pub/sub connection has no
# subscriptions and was idle past ``health_check_interval``; with the reader task blocked in
# get_message on the same socket, that read fails ("readuntil() called while another coroutine
# is already waiting") and the subscriber is lost: a replica whose last socket left and whose
# next hello came 30 s later lost its bus. Never empty, the connection never checks in
# SUBSCRIBE; its health checks go through get_message, which reads them itself.
_ANCHOR_CHANNEL = "warbler:subscriber-anchor"


class EventBus:
    """Publishes payloads on channels (names from ``Keys``) and hands out subscribers."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self.keys = keys

    async def publish(self, channel: str, payload: bytes) -> int:
        """Publish one payload; returns how many subscribers received it."""
        return int(await self._redis.publish(channel, payload))

    async def publish_many(self, messages: Iterable[tuple[str, bytes]]) -> None:
        """Publish many payloads in one round trip (a non-transactional pipeline), in order."""
        pipe = self._redis.pipeline(transaction=False)
        count = 0
        for channel, payload in messages:
            pipe.publish(channel, payload)
            count += 1
        if count:
            await pipe.execute()

    def subscriber(self) -> Subscriber:
        """A new subscriber with its own pub/sub connection; close it when done."""
        return Subscriber(self._redis.pubsub(ignore_subscribe_messages=True))


class Subscriber:
    """An async iterator of ``(channel, payload)`` over the channels it is subscribed to.

    Channels can be added and removed while another task iterates. Iteration ends on close().
    A lost connection always ends iteration with a ConnectionError, so that the caller knows
    it may have missed messages: redis-py would otherwise reconnect and resubscribe on the next
    read without a word (after a failed SUBSCRIBE, say), and the caller would never read the
    gap from its durable copy.
    """

    def __init__(self, pubsub: PubSub) -> None:
        self._pubsub = pubsub
        self._anchored = False
        self._started = asyncio.Event()
        self._closed = False
        self._lost: BaseException | None = None

    @property
    def channels(self) -> set[str]:
        """The channels currently subscribed."""
        names = {c.decode() if isinstance(c, bytes) else str(c) for c in self._pubsub.channels}
        names.discard(_ANCHOR_CHANNEL)
        return names

    @property
    def lost(self) -> bool:
        """True once a command on this subscriber's connection failed (it is not used again)."""
        return self._lost is not None

    async def subscribe(self, *channels: str) -> None:
        """Start receiving ``channels`` (returns once the command is sent)."""
        if channels:
            if not self._anchored:
                channels = (_ANCHOR_CHANNEL, *channels)
            try:
                await self._pubsub.subscribe(*channels)
            except (RedisError, OSError) as exc:
                self._mark_lost(exc)
                raise
            self._anchored = True
            connection = self._pubsub.connection
            if connection is not None and not self._started.is_set():
                # It is connected already: any later call is a reconnect (redis-py's retry
                # reconnecting within one read, and resubscribing without telling us).
                connection.register_connect_callback(self._on_reconnect)
            self._started.set()

    def _on_reconnect(self, _connection: object) -> None:
        self._mark_lost(RedisConnectionError("the pub/sub connection was re-established"))

    async def unsubscribe(self, *channels: str) -> None:
        """Stop receiving ``channels``."""
        channels = tuple(c for c in channels if c != _ANCHOR_CHANNEL)
        if channels:
            try:
                await self._pubsub.unsubscribe(*channels)
            except (RedisError, OSError) as exc:
                self._mark_lost(exc)
                raise

    def _mark_lost(self, exc: BaseException) -> None:
        # The iterator (waiting for a first subscribe, maybe) wakes up and raises.
        if self._lost is None:
            self._lost = exc
        self._started.set()

    async def close(self) -> None:
        """Close the connection and end iteration."""
        self._closed = True
        self._started.set()
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> Subscriber:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[tuple[str, bytes]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[tuple[str, bytes]]:
        await self._started.wait()
        while not self._closed:
            connection = self._pubsub.connection
            if self._lost is None and connection is not None and not connection.is_connected:
                self._lost = RedisConnectionError("the pub/sub connection was closed")
            if self._lost is not None:
                raise RedisConnectionError(f"pub/sub connection lost: {self._lost!r}")
            try:
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=_POLL_S
                )
            except (RedisConnectionError, RuntimeError) as exc:
                if self._closed:
                    return
                self._lost = exc
                raise
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            yield (
                channel.decode() if isinstance(channel, bytes) else str(channel),
                bytes(message["data"]),
            )


# Waits before resubscribing after a lost connection, then the last one repeated.
_RESUBSCRIBE_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)


class ChannelListener:
    """Calls ``on_payload`` for each message on one channel until closed, and resubscribes
    after a lost connection (with backoff). What is published while it is away is lost, as
    with any pub/sub: callers that cannot lose an event also re-read its durable copy."""

    def __init__(self, bus: EventBus, channel: str, on_payload: Callable[[bytes], None]) -> None:
        self._bus = bus
        self._channel = channel
        self._on_payload = on_payload
        self._subscriber: Subscriber | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe (returns once the command is sent: later messages are heard), then
        listen in a task of its own."""
        self._subscriber = self._bus.subscriber()
        await self._subscriber.subscribe(self._channel)
        self._task = asyncio.get_running_loop().create_task(self._listen())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._subscriber is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._subscriber.close()

    async def _listen(self) -> None:
        attempt = 0
        while True:
            subscriber = self._subscriber
            assert subscriber is not None
            try:
                async for _channel, payload in subscriber:
                    attempt = 0
                    self._on_payload(payload)
                return
            except (RedisError, OSError) as exc:
                delay = _RESUBSCRIBE_BACKOFF_S[min(attempt, len(_RESUBSCRIBE_BACKOFF_S) - 1)]
                attempt += 1
                logger.warning(
                    "channel %s lost (%r); resubscribing in %.1fs", self._channel, exc, delay
                )
                await asyncio.sleep(delay)
                with contextlib.suppress(RedisError, OSError):
                    await subscriber.close()
                # A failed subscribe leaves the new subscriber lost: iterating it raises at
                # once and the next, longer wait follows (it used to wait forever instead).
                self._subscriber = self._bus.subscriber()
                with contextlib.suppress(RedisError, OSError):
                    await self._subscriber.subscribe(self._channel)
                    attempt = 0
                    logger.info("channel %s resubscribed", self._channel)
