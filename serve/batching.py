"""Coalesce entity calls from every socket of a replica into Runtime.call_many batches.

Each ``submit`` parks a future; a single flusher sends everything queued so far as one
``call_many`` (one Ray call per host inside the Runtime) and resolves the futures in order.
While a batch is in flight the next one accumulates, so under load batches grow on their own
and at low load a call waits at most one event-loop turn.

``call`` is typed by its message (``Request[R]`` -> ``R``); ``call_many`` has already checked
each answer against its message's reply type, so the answers are passed on as they are.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from actors.messages import Request
from warbler import metrics
from warbler.errors import ErrorCode, WarblerError

logger = logging.getLogger(__name__)
_CALL_BATCH = metrics.CALL_BATCH.child()

R = TypeVar("R")
# Runtime.call_many: a reply (checked against its message's reply type) or a WarblerError each.
CallMany = Callable[[list[tuple[str, Request[Any]]]], Awaitable[Sequence[object]]]


class CallCoalescer:
    """Batches ``(entity key, message)`` calls; at most ``max_in_flight`` batches at once."""

    def __init__(
        self, call_many: CallMany, *, max_batch: int = 512, max_in_flight: int = 4
    ) -> None:
        self._call_many = call_many
        self._max_batch = max_batch
        self._queue: list[tuple[str, Request[Any], asyncio.Future[Any]]] = []
        self._slots = asyncio.Semaphore(max_in_flight)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The flusher task (None before start)."""
        return self._task

    def start(self) -> None:
        """Start the flusher (inside the running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="coalescer")

    async def call(self, key: str, message: Request[R]) -> R:
        """The entity's reply to ``message``; raises the WarblerError it failed with."""
        if self._closed:
            raise WarblerError(ErrorCode.UNAVAILABLE, "the gateway is shutting down")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((key, message, future))
        self._wakeup.set()
        return await future

    async def close(self) -> None:
        """Stop taking calls; fail what is still queued."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for _, _, future in self._queue:
            if not future.done():
                future.set_exception(WarblerError(ErrorCode.UNAVAILABLE, "gateway shutting down"))
        self._queue.clear()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                await self._slots.acquire()
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                asyncio.get_running_loop().create_task(self._send(batch))
            # Let the sockets that woke us add to the next batch before we look again.
            await asyncio.sleep(0)

    async def _send(self, batch: list[tuple[str, Request[Any], asyncio.Future[Any]]]) -> None:
        _CALL_BATCH.observe(len(batch))
        try:
            results = await self._call_many([(key, msg) for key, msg, _ in batch])
        except BaseException as exc:  # the whole batch failed (e.g. runtime unavailable)
            error: BaseException = exc
            if not isinstance(exc, WarblerError | asyncio.CancelledError):
                logger.exception("batched entity call failed")
                error = WarblerError(ErrorCode.UNAVAILABLE, f"entity call failed: {exc!r}")
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        finally:
            self._slots.release()
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
