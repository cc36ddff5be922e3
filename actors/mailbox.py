"""One activation of an entity and its mailbox.

Messages are handled one at a time in arrival order by a task that exists only while the
mailbox has work (an idle entity costs no task and no queue: 100k active entities must fit in
a few hundred MB). A handler returning ``Later`` releases the mailbox at once; its reply
arrives when the ``Later`` completes. ``pending`` counts messages accepted and not yet
answered, ``Later`` ones included: zero means the entity is quiescent and may be checkpointed
and passivated.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from actors.entity import Entity, Later
from actors.messages import Request
from warbler import logs
from warbler.errors import ErrorCode, WarblerError

logger = logging.getLogger(__name__)

ACTIVATING, ACTIVE, PASSIVATING, GONE = range(4)


class Reply:
    """Collects the results of one batch in envelope order; ``done`` resolves with the last."""

    __slots__ = ("results", "remaining", "done")

    def __init__(self, size: int) -> None:
        self.results: list[object] = [None] * size
        self.remaining = size
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if size == 0:
            self.done.set_result(None)

    def set(self, index: int, value: object) -> None:
        """Record the result of envelope ``index``."""
        self.results[index] = value
        self.remaining -= 1
        if self.remaining == 0 and not self.done.done():
            self.done.set_result(None)


def as_error(exc: BaseException, key: str) -> WarblerError:
    """A handler's exception as the WarblerError sent back for its envelope."""
    if isinstance(exc, WarblerError):
        return exc
    if isinstance(exc, asyncio.CancelledError):
        return WarblerError(ErrorCode.UNAVAILABLE, f"{key}: the host is shutting down")
    logger.error("entity %s failed", key, exc_info=exc)
    return WarblerError(ErrorCode.INTERNAL, f"{key}: {type(exc).__name__}")


class Activation:
    """An entity's place on its host: mailbox, status, checkpoint bookkeeping."""

    __slots__ = (
        "key",
        "entity",
        "status",
        "queue",
        "running",
        "pending",
        "last_used",
        "redis_mark",
        "sql_mark",
        "dirty_since",
        "waiters",
        "_on_answer",
    )

    def __init__(self, key: str, on_answer: Callable[[Activation], None]) -> None:
        self.key = key
        self.entity: Entity[Any] | None = None
        self.status = ACTIVATING
        self.queue: deque[tuple[Request[Any], Reply, int]] | None = None
        self.running = False
        self.pending = 0
        self.last_used = 0.0
        # entity.changes as of the last Redis / SQL checkpoint (-1: that copy is missing).
        self.redis_mark = 0
        self.sql_mark = 0
        self.dirty_since = 0.0
        # Futures waiting for pending == 0 (drain, passivation), or for the end (GONE).
        self.waiters: list[asyncio.Future[None]] | None = None
        self._on_answer = on_answer

    def post(self, message: Request[Any], reply: Reply, index: int) -> None:
        """Handle or queue a message; its answer goes to ``reply.set(index, ...)``."""
        self.pending += 1
        entity = self.entity
        if (
            self.status == ACTIVE
            and not self.running
            and not self.queue
            and entity is not None
            and entity.handles_inline(message)
        ):
            # Idle mailbox and a handler that never waits: answer right here, no task.
            try:
                result: object = entity.handle_inline(message)
            except Exception as exc:
                result = as_error(exc, self.key)
            self._deliver(reply, index, result)
            return
        if self.queue is None:
            self.queue = deque()
        self.queue.append((message, reply, index))
        if not self.running and self.status != ACTIVATING:
            self.start()

    def start(self) -> None:
        """Run the mailbox if it has work (after activation, or when a message arrives)."""
        if self.queue and not self.running:
            self.running = True
            asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        entity = self.entity
        assert entity is not None
        current: tuple[Reply, int] | None = None
        # Log context: the entity, and the message's client_msg_id (it travelled in the batch).
        logs.bind(entity=self.key)
        try:
            while self.queue:
                message, reply, index = self.queue.popleft()
                current = (reply, index)
                token = logs.bind(client_msg_id=getattr(message, "client_msg_id", None))
                try:
                    result: object = await entity.handle(message)
                except Exception as exc:
                    result = as_error(exc, self.key)
                logs.unbind(token)
                current = None
                self._deliver(reply, index, result)
        finally:
            self.running = False
            # Cancelled (the host is stopping): answer what was taken and what is queued.
            cancelled = as_error(asyncio.CancelledError(), self.key)
            if current is not None:
                self._answer(current[0], current[1], cancelled)
            queue, self.queue = self.queue, None  # an idle entity keeps no deque
            while queue:
                _, reply, index = queue.popleft()
                self._answer(reply, index, cancelled)

    def _deliver(self, reply: Reply, index: int, result: object) -> None:
        if isinstance(result, Later):
            result.task.add_done_callback(partial(self._later_done, reply, index))
        else:
            self._answer(reply, index, result)

    def _later_done(self, reply: Reply, index: int, task: asyncio.Future[object]) -> None:
        if task.cancelled():
            result: object = as_error(asyncio.CancelledError(), self.key)
        else:
            exc = task.exception()
            result = as_error(exc, self.key) if exc is not None else task.result()
        self._answer(reply, index, result)

    def _answer(self, reply: Reply, index: int, result: object) -> None:
        reply.set(index, result)
        self.pending -= 1
        if self.pending == 0 and self.waiters:
            self._wake()
        self._on_answer(self)

    def fail_all(self, error: WarblerError) -> None:
        """Answer every queued message with ``error`` (activation failed)."""
        queue, self.queue = self.queue, None
        while queue:
            _, reply, index = queue.popleft()
            self._answer(reply, index, error)

    async def quiesce(self) -> None:
        """Wait until every accepted message is answered."""
        while self.pending > 0:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self.waiters is None:
                self.waiters = []
            self.waiters.append(future)
            await future

    def _wake(self) -> None:
        waiters, self.waiters = self.waiters, None
        for future in waiters or ():
            if not future.done():
                future.set_result(None)
