"""The event bus: Redis pub/sub between conversation entities and gateways.

Best effort by design (pub/sub drops what nobody hears); clients close gaps by seq from SQL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from types import TracebackType

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError

from storage.keys import Keys

logger = logging.getLogger(__name__)

_POLL_S = 1.0


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
    """

    def __init__(self, pubsub: PubSub) -> None:
        self._pubsub = pubsub
        self._started = asyncio.Event()
        self._closed = False

    @property
    def channels(self) -> set[str]:
        """The channels currently subscribed."""
        return {c.decode() if isinstance(c, bytes) else str(c) for c in self._pubsub.channels}

    async def subscribe(self, *channels: str) -> None:
        """Start receiving ``channels`` (returns once the command is sent)."""
        if channels:
            await self._pubsub.subscribe(*channels)
            self._started.set()

    async def unsubscribe(self, *channels: str) -> None:
        """Stop receiving ``channels``."""
        if channels:
            await self._pubsub.unsubscribe(*channels)

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
            try:
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=_POLL_S
                )
            except (RedisConnectionError, RuntimeError):
                if self._closed:
                    return
                raise
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            yield (
                channel.decode() if isinstance(channel, bytes) else str(channel),
                bytes(message["data"]),
            )
