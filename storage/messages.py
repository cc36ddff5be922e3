"""Reading a conversation's message log (writing goes through ``GroupCommitWriter``)."""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import col, select

from storage.db import Database
from storage.models import Message
from warbler.errors import ErrorCode, WarblerError

PAGE_LIMIT_MAX = 1000


class MessageStore:
    """Pages, last seq and idempotency look-ups over the ``messages`` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def page_messages(
        self,
        conversation_id: int,
        *,
        after_seq: int | None = None,
        before_seq: int | None = None,
        limit: int = 100,
    ) -> list[Message]:
        """Messages in ascending seq order.

        With ``after_seq``: the first ``limit`` messages after it (catch-up), bounded by
        ``before_seq`` if given. Without it: the newest ``limit`` messages before ``before_seq``
        (or the newest of all), for scrolling back through history.
        """
        if not 1 <= limit <= PAGE_LIMIT_MAX:
            raise WarblerError(ErrorCode.VALIDATION, f"limit must be 1-{PAGE_LIMIT_MAX}")
        query = select(Message).where(col(Message.conversation_id) == conversation_id)
        if before_seq is not None:
            query = query.where(col(Message.seq) < before_seq)
        async with self._db.session() as session:
            if after_seq is not None:
                query = query.where(col(Message.seq) > after_seq)
                result = await session.exec(query.order_by(col(Message.seq)).limit(limit))
                return list(result.all())
            result = await session.exec(query.order_by(col(Message.seq).desc()).limit(limit))
            return list(reversed(result.all()))

    async def last_seq(self, conversation_id: int) -> int:
        """The highest seq stored for the conversation (0 when empty)."""
        async with self._db.session() as session:
            value = await session.scalar(
                select(func.max(Message.seq)).where(col(Message.conversation_id) == conversation_id)
            )
            return int(value or 0)

    async def get_by_client_id(self, sender_id: int, client_msg_id: str) -> Message | None:
        """The message a sender stored under ``client_msg_id``, or None."""
        async with self._db.session() as session:
            result = await session.exec(
                select(Message).where(
                    col(Message.sender_id) == sender_id,
                    col(Message.client_msg_id) == client_msg_id,
                )
            )
            return result.first()
