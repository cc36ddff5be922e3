"""Batched publishing: every event produced in one event-loop tick goes out in one pipeline."""

from __future__ import annotations

import asyncio
import logging

from storage.events import EventBus

logger = logging.getLogger(__name__)

# How long a failed flush is retried before its events are dropped (a Redis restart takes
# about a second; a message published late is still delivered, in order, by seq).
RETRY_FOR_S = 10.0


class Publisher:
    """Queues ``(channel, payload)`` pairs and flushes them with ``EventBus.publish_many``.

    One flush runs at a time and takes everything queued, so events leave in the order they
    were published (per conversation: seq order). Publishing is best effort, as the bus is:
    a failed flush is retried (Redis restarting) for up to ``RETRY_FOR_S``, then logged and
    dropped; gateways close gaps by seq from SQL (and read every tail after a lost pub/sub
    connection), and a retried event they already have is a duplicate they skip.
    """

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._queue: list[tuple[str, bytes]] = []
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.flushes = 0

    def publish(self, channel: str, payload: bytes) -> None:
        """Queue one event (never blocks)."""
        self._queue.append((channel, payload))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flush())

    def publish_many(self, events: list[tuple[str, bytes]]) -> None:
        """Queue several events, in order."""
        for channel, payload in events:
            self.publish(channel, payload)

    async def _flush(self) -> None:
        try:
            # Let the rest of this tick's commits add their events to the same pipeline.
            await asyncio.sleep(0)
            while self._queue:
                batch, self._queue = self._queue, []
                give_up = asyncio.get_running_loop().time() + RETRY_FOR_S
                delay = 0.05
                failed_since: float | None = None
                while True:
                    try:
                        await self._bus.publish_many(batch)
                        self.published += len(batch)
                        self.flushes += 1
                        if failed_since is not None:
                            logger.warning(
                                "published %d events after %.2fs of failed flushes",
                                len(batch), asyncio.get_running_loop().time() - failed_since,
                            )
                        break
                    except Exception:
                        if failed_since is None:
                            failed_since = asyncio.get_running_loop().time()
                        if asyncio.get_running_loop().time() + delay > give_up:
                            logger.exception("publishing %d events failed; dropped", len(batch))
                            break
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 1.0)
                        # Whatever was queued meanwhile goes out in the same retry, in order.
                        batch, self._queue = batch + self._queue, []
        finally:
            self._task = None

    async def drain(self) -> None:
        """Wait until everything queued so far has been flushed."""
        while self._task is not None:
            await asyncio.shield(self._task)
