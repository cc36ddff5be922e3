"""Group commit: many appends to many conversations share one transaction.

Each conversation entity is the single writer of its log and owns a ``SeqCounter``. It hands
its drafts to the process's ``GroupCommitWriter``, which queues them FIFO and commits them in
batches (``storage.appends.write_batch``: one SELECT for duplicates, seqs in arrival order, one
multi-row INSERT). One transaction is in flight at a time, so batches, and the seqs they assign,
commit in order; if one fails its counters are restored and every caller in it gets the error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.appends import (
    MessageDraft,
    SeqCounter,
    StoredMessage,
    store_batch,
    validate_draft,
)
from storage.db import Database
from warbler import metrics
from warbler.errors import ErrorCode, WarblerError

__all__ = ["GroupCommitWriter", "MessageDraft", "SeqCounter", "StoredMessage"]

logger = logging.getLogger(__name__)
_COMMIT_BATCH = metrics.COMMIT_BATCH.child()
_COMMIT_SECONDS = metrics.COMMIT_SECONDS.child()
_COMMIT_ERRORS = metrics.SQL_ERRORS.child("commit")


@dataclass(slots=True)
class _Pending:
    draft: MessageDraft
    counter: SeqCounter
    future: asyncio.Future[StoredMessage]
    enqueued: float = field(default=0.0)


class GroupCommitWriter:
    """Appends messages in group-committed batches (see the module docstring).

    A batch is flushed when it holds ``max_batch`` drafts or when its oldest draft has waited
    ``max_delay_ms``; while a transaction is in flight new drafts queue for the next batch.
    """

    def __init__(
        self,
        db: Database,
        *,
        max_batch: int = 512,
        max_delay_ms: float = 2.0,
        portable_sql: bool = False,
    ) -> None:
        if max_batch < 1:
            raise WarblerError(ErrorCode.CONFIG, "max_batch must be at least 1")
        self._db = db
        self._max_batch = max_batch
        self._max_delay_s = max(0.0, max_delay_ms) / 1000.0
        # Only the SQL every engine runs (as on MySQL): for tests and the benchmark.
        self._portable = portable_sql
        self._pending: deque[_Pending] = deque()
        self._nonempty = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._conn: AsyncConnection | None = None
        self.batches = 0  # counters for metrics and the benchmark
        self.appended = 0

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._task is not None and not self._stopping

    async def start(self) -> None:
        """Start the flushing task (idempotent)."""
        if self._task is not None and not self._task.done():
            return
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="group-commit-writer")

    async def stop(self) -> None:
        """Flush everything queued, then stop."""
        if self._task is None:
            return
        self._stopping = True
        self._nonempty.set()
        self._full.set()
        try:
            await self._task
        finally:
            self._task = None
            await self._drop_connection()

    def submit(self, draft: MessageDraft, counter: SeqCounter) -> asyncio.Future[StoredMessage]:
        """Queue ``draft`` now and return the future of its commit (what the batch raised, on
        failure). Synchronous: the draft is queued in call order, and a caller that does not
        need a coroutine of its own (an entity answering through a callback) costs no task."""
        if not self.running:
            raise WarblerError(ErrorCode.UNAVAILABLE, "the message writer is not running")
        validate_draft(draft)
        loop = asyncio.get_running_loop()
        item = _Pending(draft, counter, loop.create_future(), loop.time())
        self._pending.append(item)
        self._nonempty.set()
        if len(self._pending) >= self._max_batch:
            self._full.set()
        return item.future

    async def append(self, draft: MessageDraft, counter: SeqCounter) -> StoredMessage:
        """Queue ``draft`` and wait until its batch commits; raises what the batch raised."""
        return await self.submit(draft, counter)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._pending:
                    if self._stopping:
                        return
                    self._nonempty.clear()
                    await self._nonempty.wait()
                    continue
                if len(self._pending) < self._max_batch and not self._stopping:
                    # Wait until the oldest draft has waited max_delay, or the batch is full.
                    remaining = self._pending[0].enqueued + self._max_delay_s - loop.time()
                    if remaining > 0:
                        self._full.clear()
                        try:
                            async with asyncio.timeout(remaining):
                                await self._full.wait()
                        except TimeoutError:
                            pass
                n = min(len(self._pending), self._max_batch)
                batch = [self._pending.popleft() for _ in range(n)]
                await self._flush(batch)
        except BaseException as exc:
            # Never strand a caller: fail whatever is still queued.
            err = (
                exc
                if isinstance(exc, Exception)
                else WarblerError(ErrorCode.UNAVAILABLE, "the message writer stopped")
            )
            while self._pending:
                item = self._pending.popleft()
                if not item.future.done():
                    item.future.set_exception(err)
            raise

    async def _flush(self, batch: list[_Pending]) -> None:
        items = [(p.draft, p.counter) for p in batch]
        _COMMIT_BATCH.observe(len(batch))
        started = time.perf_counter()
        try:
            try:
                results = await self._commit(items)
            except IntegrityError:
                # Another process stored one of these (sender_id, client_msg_id) pairs between our
                # SELECT and INSERT (the pair is unique across conversations). The retry's SELECT
                # sees it and returns it as a duplicate; any other conflict fails again.
                logger.info("group commit hit a unique conflict; retrying the batch once")
                results = await self._commit(items)
        except Exception as exc:
            _COMMIT_ERRORS.inc()
            logger.warning(
                "group commit of %d messages failed: %r",
                len(batch),
                exc,
                extra={"client_msg_ids": [p.draft.client_msg_id for p in batch[:50]]},
            )
            err = _as_unavailable(exc)
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(err)
            return
        _COMMIT_SECONDS.observe(time.perf_counter() - started)
        self.batches += 1
        self.appended += len(batch)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "committed %d messages",
                len(batch),
                extra={"messages": [(r.conversation_id, r.seq, r.client_msg_id) for r in results]},
            )
        for p, result in zip(batch, results, strict=True):
            if not p.future.done():
                p.future.set_result(result)

    async def _commit(self, items: list[tuple[MessageDraft, SeqCounter]]) -> list[StoredMessage]:
        conn = None
        if self._db.dialect == "postgresql" and not self._portable:
            # A connection of its own: no pool checkout and pre-ping round trip per batch.
            if self._conn is None:
                self._conn = await self._db.autocommit_engine.connect()
            conn = self._conn
        try:
            return await store_batch(self._db, items, conn, portable=self._portable)
        except BaseException:
            if conn is not None:
                await self._drop_connection()
            raise

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # already broken: the pool discards it
                logger.debug("closing the writer's connection failed", exc_info=True)


def _as_unavailable(exc: Exception) -> Exception:
    """A lost or refused database connection is the database being unavailable: callers get
    ``UNAVAILABLE`` (retry with the same client_msg_id: appends are idempotent), not an internal
    error. Anything else (a constraint, a bug) goes up as it is."""
    lost = isinstance(exc, OperationalError | InterfaceError | OSError) or (
        isinstance(exc, DBAPIError)
        and (
            exc.connection_invalidated
            # asyncpg's client-side protocol state error: what a connection terminated in the
            # middle of an operation raises (seen when PostgreSQL killed the writer's backend).
            or type(exc.orig).__name__ == "InternalClientError"
        )
    )
    if not lost:
        return exc
    err = WarblerError(
        ErrorCode.UNAVAILABLE, "the database is unavailable; retry with the same client_msg_id"
    )
    err.__cause__ = exc
    return err
