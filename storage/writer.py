"""Group commit: many appends to many conversations share one transaction.

Each conversation entity is the single writer of its log and owns a ``SeqCounter``. It hands
its drafts to the process's ``GroupCommitWriter``, which queues them FIFO, and per batch runs one
SELECT (already stored ``(sender_id, client_msg_id)`` pairs), assigns seqs in arrival order, runs
one multi-row INSERT and commits. One transaction is in flight at a time, so batches, and the
seqs they assign, commit in order. Only SQLAlchemy Core on this path: no ORM objects.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Table, insert, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.db import Database
from storage.models import CLIENT_MSG_ID_MAX, KIND_MAX, Message
from storage.types import utcnow
from warbler.errors import ErrorCode, WarblerError

logger = logging.getLogger(__name__)

_messages: Table = Message.__table__  # type: ignore[attr-defined]
_COLUMNS = (
    _messages.c.id,
    _messages.c.conversation_id,
    _messages.c.seq,
    _messages.c.sender_id,
    _messages.c.client_msg_id,
    _messages.c.kind,
    _messages.c.body,
    _messages.c.created_at,
)


@dataclass
class SeqCounter:
    """The last seq a conversation has assigned. Owned by the conversation entity's state; the
    writer advances it as it assigns seqs and restores it if the transaction fails."""

    last_seq: int = 0


@dataclass(frozen=True)
class MessageDraft:
    """A message to append, before it has a seq."""

    conversation_id: int
    sender_id: int
    client_msg_id: str
    kind: str
    body: dict[str, Any]


@dataclass(frozen=True)
class StoredMessage:
    """A committed message. ``duplicate`` is True when the ``(sender_id, client_msg_id)`` was
    already stored: this is that stored message, and the append consumed no seq."""

    id: int
    conversation_id: int
    seq: int
    sender_id: int
    client_msg_id: str
    kind: str
    body: dict[str, Any]
    created_at: datetime
    duplicate: bool = False

    @classmethod
    def from_row(cls, row: Any, *, duplicate: bool = False) -> StoredMessage:
        """Build from a row holding the ``messages`` columns."""
        return cls(
            id=row.id,
            conversation_id=row.conversation_id,
            seq=row.seq,
            sender_id=row.sender_id,
            client_msg_id=row.client_msg_id,
            kind=row.kind,
            body=row.body,
            created_at=row.created_at,
            duplicate=duplicate,
        )


def validate_draft(draft: MessageDraft) -> None:
    """Raise ``WarblerError(VALIDATION)`` for a draft the database would reject or truncate."""
    if not draft.client_msg_id or len(draft.client_msg_id) > CLIENT_MSG_ID_MAX:
        raise WarblerError(
            ErrorCode.VALIDATION, f"client_msg_id must be 1-{CLIENT_MSG_ID_MAX} characters"
        )
    if not draft.kind or len(draft.kind) > KIND_MAX:
        raise WarblerError(ErrorCode.VALIDATION, f"kind must be 1-{KIND_MAX} characters")
    if not isinstance(draft.body, dict):
        raise WarblerError(ErrorCode.VALIDATION, "body must be a JSON object")


async def write_batch(
    conn: AsyncConnection, items: Sequence[tuple[MessageDraft, SeqCounter]]
) -> list[StoredMessage]:
    """Store ``items`` inside the caller's transaction: one SELECT for duplicates, seqs from
    each counter in order, one multi-row INSERT. Advances the counters; the caller restores them
    if the transaction does not commit. Returns one result per item, in order."""
    keys = list(dict.fromkeys((d.sender_id, d.client_msg_id) for d, _ in items))
    existing: dict[tuple[int, str], StoredMessage] = {}
    if keys:
        rows = await conn.execute(
            select(*_COLUMNS).where(
                tuple_(_messages.c.sender_id, _messages.c.client_msg_id).in_(keys)
            )
        )
        for row in rows:
            existing[(row.sender_id, row.client_msg_id)] = StoredMessage.from_row(
                row, duplicate=True
            )

    now = utcnow()
    params: list[dict[str, Any]] = []
    # Per item: an index into ``params`` (a new row) or the key of an earlier/stored message.
    slots: list[int | tuple[int, str]] = []
    first_in_batch: dict[tuple[int, str], int] = {}
    for draft, counter in items:
        key = (draft.sender_id, draft.client_msg_id)
        if key in existing:
            slots.append(key)
            continue
        if key in first_in_batch:
            slots.append(key)
            continue
        counter.last_seq += 1
        first_in_batch[key] = len(params)
        slots.append(len(params))
        params.append(
            {
                "conversation_id": draft.conversation_id,
                "seq": counter.last_seq,
                "sender_id": draft.sender_id,
                "client_msg_id": draft.client_msg_id,
                "kind": draft.kind,
                "body": draft.body,
                "created_at": now,
            }
        )

    ids = await _insert(conn, params) if params else []
    fresh = [
        StoredMessage(id=row_id, created_at=now, duplicate=False, **_without_ts(p))
        for row_id, p in zip(ids, params, strict=True)
    ]
    results: list[StoredMessage] = []
    for slot in slots:
        if isinstance(slot, int):
            results.append(fresh[slot])
        elif slot in existing:
            results.append(existing[slot])
        else:
            results.append(replace(fresh[first_in_batch[slot]], duplicate=True))
    return results


def _without_ts(p: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in p.items() if k != "created_at"}


async def _insert(conn: AsyncConnection, params: list[dict[str, Any]]) -> list[int]:
    """One multi-row INSERT (SQLAlchemy's insertmanyvalues); the new ids in parameter order."""
    if conn.dialect.insert_executemany_returning_sort_by_parameter_order:
        stmt = insert(_messages).returning(_messages.c.id, sort_by_parameter_order=True)
        result = await conn.execute(stmt, params)
        return [row[0] for row in result]
    # A driver without ordered RETURNING: insert, then read the ids back by the unique key.
    await conn.execute(insert(_messages), params)
    keys = [(p["sender_id"], p["client_msg_id"]) for p in params]
    rows = await conn.execute(
        select(_messages.c.id, _messages.c.sender_id, _messages.c.client_msg_id).where(
            tuple_(_messages.c.sender_id, _messages.c.client_msg_id).in_(keys)
        )
    )
    by_key = {(r.sender_id, r.client_msg_id): r.id for r in rows}
    return [by_key[k] for k in keys]


@dataclass
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

    def __init__(self, db: Database, *, max_batch: int = 512, max_delay_ms: float = 2.0) -> None:
        if max_batch < 1:
            raise WarblerError(ErrorCode.CONFIG, "max_batch must be at least 1")
        self._db = db
        self._max_batch = max_batch
        self._max_delay_s = max(0.0, max_delay_ms) / 1000.0
        self._pending: deque[_Pending] = deque()
        self._nonempty = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
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

    async def append(self, draft: MessageDraft, counter: SeqCounter) -> StoredMessage:
        """Queue ``draft`` and wait until its batch commits; raises what the batch raised."""
        if not self.running:
            raise WarblerError(ErrorCode.UNAVAILABLE, "the message writer is not running")
        validate_draft(draft)
        loop = asyncio.get_running_loop()
        item = _Pending(draft, counter, loop.create_future(), loop.time())
        self._pending.append(item)
        self._nonempty.set()
        if len(self._pending) >= self._max_batch:
            self._full.set()
        return await item.future

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
            logger.warning("group commit of %d messages failed: %r", len(batch), exc)
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        self.batches += 1
        self.appended += len(batch)
        for p, result in zip(batch, results, strict=True):
            if not p.future.done():
                p.future.set_result(result)

    async def _commit(self, items: list[tuple[MessageDraft, SeqCounter]]) -> list[StoredMessage]:
        before: dict[int, tuple[SeqCounter, int]] = {}
        for _, counter in items:
            before.setdefault(id(counter), (counter, counter.last_seq))
        try:
            async with self._db.engine.begin() as conn:
                return await write_batch(conn, items)
        except BaseException:
            for counter, last_seq in before.values():
                counter.last_seq = last_seq
            raise
