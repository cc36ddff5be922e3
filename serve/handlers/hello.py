"""What a hello reads from SQL, batched: the conversation ids and kinds of every user whose
first socket arrives on this replica within one flush, in one query.

A connection surge (a replica's sockets resuming elsewhere, a morning peak) brings hundreds of
hellos at once; one query per user, each building ORM rows with the last message and unread
count that the hello never uses, was a round trip and a few hundred microseconds of CPU each.
Here concurrent loads share one SELECT of plain (user, conversation, kind) rows; while a query
is in flight the next batch accumulates, so batches grow with the load (as in CallCoalescer).
"""

from __future__ import annotations

import asyncio
import logging

from storage import ConversationStore

logger = logging.getLogger(__name__)

# Bound on user ids per IN (...) list: far below every backend's parameter limit.
MAX_USERS_PER_QUERY = 500


class MembershipLoader:
    """Coalesces ``load(user_id)`` calls into ``ConversationStore.memberships_of`` batches."""

    def __init__(self, conversations: ConversationStore, *, max_in_flight: int = 2) -> None:
        self._conversations = conversations
        self._waiting: dict[int, list[asyncio.Future[dict[int, str]]]] = {}
        self._slots = asyncio.Semaphore(max_in_flight)
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.queries = 0

    async def load(self, user_id: int) -> dict[int, str]:
        """Conversation id -> kind of every conversation the user belongs to."""
        future: asyncio.Future[dict[int, str]] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(user_id, []).append(future)
        if not self._scheduled:
            self._scheduled = True
            task = asyncio.get_running_loop().create_task(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return dict(await future)

    async def _flush(self) -> None:
        # Holding a slot first lets every load that arrives meanwhile join this batch.
        async with self._slots:
            self._scheduled = False
            waiting, self._waiting = self._waiting, {}
            users = list(waiting)
            try:
                for start in range(0, len(users), MAX_USERS_PER_QUERY):
                    chunk = users[start : start + MAX_USERS_PER_QUERY]
                    self.queries += 1
                    try:
                        found = await self._conversations.memberships_of(chunk)
                    except Exception as exc:
                        _settle(waiting, chunk, error=exc)
                        continue
                    _settle(waiting, chunk, found=found)
            finally:
                # Cancelled (the replica is shutting down): nobody may wait forever.
                for futures in waiting.values():
                    for future in futures:
                        future.cancel()


def _settle(
    waiting: dict[int, list[asyncio.Future[dict[int, str]]]],
    users: list[int],
    *,
    found: dict[int, dict[int, str]] | None = None,
    error: Exception | None = None,
) -> None:
    for uid in users:
        for future in waiting[uid]:
            if future.done():
                continue
            if found is not None:
                future.set_result(found[uid])
            else:
                future.set_exception(error or RuntimeError("membership read failed"))
