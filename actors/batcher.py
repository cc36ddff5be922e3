"""Client-side batching: every call to one host within a short window becomes one Ray call.

A ``HostChannel`` collects ``(key, message)`` envelopes. It sends a batch when the window since
the first queued envelope has passed or ``max_batch`` are queued, keeping at most
``max_inflight`` batches in flight; while they are, new envelopes keep accumulating, and the
next batch leaves as soon as one returns. Under load, batches grow by themselves (Nagle).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ray.exceptions import ActorUnavailableError

from actors.messages import Request
from actors.wire import Envelope

logger = logging.getLogger(__name__)


class HostChannel:
    """Batches envelopes to one host actor (see the module docstring).

    Each submitted envelope gets a future resolved with its result (a value, a WarblerError
    or a Redirect), or failed with the Ray exception that lost the whole batch
    (``ActorUnavailableError`` when no answer came within ``batch_timeout_s``: callers retry
    as for a restarting host, and the envelopes are idempotent).
    """

    def __init__(
        self,
        name: str,
        handle: Any,
        epoch: Callable[[], int],
        on_epoch: Callable[[int], None],
        *,
        window_s: float,
        max_batch: int,
        max_inflight: int,
        batch_timeout_s: float = 60.0,
    ) -> None:
        self.name = name
        self.handle = handle
        self._epoch = epoch
        self._on_epoch = on_epoch
        self._window_s = max(0.0, window_s)
        self._max_batch = max(1, max_batch)
        self._max_inflight = max(1, max_inflight)
        self._batch_timeout_s = batch_timeout_s
        self._queue: list[tuple[str, Request[Any], asyncio.Future[object]]] = []
        self._inflight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches_sent = 0
        self.envelopes_sent = 0

    def submit(self, key: str, message: Request[Any]) -> asyncio.Future[object]:
        """Queue one envelope; the future resolves with its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[object] = loop.create_future()
        self._queue.append((key, message, future))
        if self._inflight < self._max_inflight:
            if len(self._queue) >= self._max_batch or self._window_s == 0.0:
                self._flush()
            elif self._timer is None:
                self._timer = loop.call_later(self._window_s, self._flush)
        return future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop = asyncio.get_running_loop()
        while self._queue and self._inflight < self._max_inflight:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            self._inflight += 1
            task = loop.create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[str, Request[Any], asyncio.Future[object]]]) -> None:
        envelopes: list[Envelope] = [(key, message) for key, message, _ in batch]
        self.batches_sent += 1
        self.envelopes_sent += len(envelopes)
        try:
            # Bounded: a reply Ray never delivers (seen once after a kill -9) would otherwise
            # hold an in-flight slot forever and wedge every later call to this host.
            epoch, results = await asyncio.wait_for(
                self.handle.handle_batch.remote(self._epoch(), envelopes),
                self._batch_timeout_s,
            )
        except TimeoutError:
            lost = ActorUnavailableError(
                f"host {self.name} did not answer a batch in {self._batch_timeout_s:.0f}s", None
            )
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(lost)
        except Exception as exc:  # the host died or is restarting: every envelope failed
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, _, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
            self._on_epoch(epoch)
        finally:
            self._inflight -= 1
            # Whatever queued while this batch was out has waited at least one round trip.
            if self._queue:
                self._flush()

    async def close(self) -> None:
        """Cancel the timer and wait for batches in flight."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
