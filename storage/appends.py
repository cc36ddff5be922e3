"""One batch of message appends, in the caller's transaction: the SQL of group commit.

Per batch: one SELECT for the ``(sender_id, client_msg_id)`` pairs already stored, seqs assigned
in order from each draft's counter, one multi-row INSERT ... RETURNING. Only SQLAlchemy Core, no
ORM objects. On PostgreSQL, MariaDB and SQLite both statements take the batch as one JSON
document (``json_to_recordset`` / ``JSON_TABLE`` / ``json_each``); MySQL (no INSERT ...
RETURNING) and old versions use SQLAlchemy's insertmanyvalues (one multi-row VALUES) and a
row-value IN.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Table, TextualSelect, bindparam, insert, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.db import Database
from storage.models import CLIENT_MSG_ID_MAX, KIND_MAX, Message
from storage.types import UTCDateTime, utcnow
from warbler.errors import ErrorCode, WarblerError

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


@dataclass(frozen=True)
class _JsonBatchSQL:
    """The batch statements of an engine that can expand one JSON document into rows.

    The batch travels as one parameter: the SQL text never changes with the batch size (the
    driver prepares it once), and encoding one document costs the client about half of what
    binding seven parameters per row does.
    """

    existing: TextualSelect  # takes :keys, a JSON array of {"u": sender_id, "m": client_msg_id}
    insert: TextualSelect  # takes :rows (below) and :created_at; RETURNING id, conversation_id, seq
    body_as_text: bool  # the row's "b" is the body's JSON text rather than the object itself


_PG_SQL = _JsonBatchSQL(
    existing=text(
        "SELECT m.id, m.conversation_id, m.seq, m.sender_id, m.client_msg_id, m.kind, m.body,"
        " m.created_at FROM messages AS m"
        " JOIN json_to_recordset(CAST(:keys AS JSON)) AS k(u BIGINT, m VARCHAR(64))"
        " ON m.sender_id = k.u AND m.client_msg_id = k.m"
    ).columns(*_COLUMNS),
    insert=text(
        "INSERT INTO messages"
        " (conversation_id, seq, sender_id, client_msg_id, kind, body, created_at)"
        " SELECT r.c, r.s, r.u, r.m, r.k, r.b, :created_at"
        " FROM json_to_recordset(CAST(:rows AS JSON))"
        " AS r(c BIGINT, s BIGINT, u BIGINT, m VARCHAR(64), k VARCHAR(16), b JSON)"
        " RETURNING id, conversation_id, seq"
    )
    .bindparams(bindparam("created_at", type_=UTCDateTime()))
    .columns(_messages.c.id, _messages.c.conversation_id, _messages.c.seq),
    body_as_text=False,
)

# MariaDB >= 10.6 (JSON_TABLE, INSERT ... RETURNING). STRAIGHT_JOIN makes the few keys drive
# the unique index instead of letting the optimizer scan messages. The string columns take the
# tables' binary collation, so comparisons are exact, as everywhere else.
_UTF8_BIN = "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
_MARIADB_SQL = _JsonBatchSQL(
    existing=text(
        "SELECT STRAIGHT_JOIN m.id, m.conversation_id, m.seq, m.sender_id, m.client_msg_id,"
        " m.kind, m.body, m.created_at"
        " FROM JSON_TABLE(:keys, '$[*]' COLUMNS("
        f" u BIGINT PATH '$.u', cm VARCHAR(64) {_UTF8_BIN} PATH '$.m')) AS k"
        " JOIN messages AS m ON m.sender_id = k.u AND m.client_msg_id = k.cm"
    ).columns(*_COLUMNS),
    insert=text(
        "INSERT INTO messages"
        " (conversation_id, seq, sender_id, client_msg_id, kind, body, created_at)"
        " SELECT r.c, r.s, r.u, r.m, r.k, r.b, :created_at"
        " FROM JSON_TABLE(:rows, '$[*]' COLUMNS("
        " c BIGINT PATH '$.c', s BIGINT PATH '$.s', u BIGINT PATH '$.u',"
        f" m VARCHAR(64) {_UTF8_BIN} PATH '$.m', k VARCHAR(16) {_UTF8_BIN} PATH '$.k',"
        f" b LONGTEXT {_UTF8_BIN} PATH '$.b')) AS r"
        " RETURNING id, conversation_id, seq"
    )
    .bindparams(bindparam("created_at", type_=UTCDateTime()))
    .columns(_messages.c.id, _messages.c.conversation_id, _messages.c.seq),
    body_as_text=True,
)


# SQLite >= 3.38 (JSON functions built in; RETURNING since 3.35). CROSS JOIN fixes the join order
# so each key probes the (sender_id, client_msg_id) index.
_SQLITE_SQL = _JsonBatchSQL(
    existing=text(
        "SELECT m.id, m.conversation_id, m.seq, m.sender_id, m.client_msg_id, m.kind, m.body,"
        " m.created_at FROM json_each(:keys) AS k CROSS JOIN messages AS m"
        " ON m.sender_id = json_extract(k.value, '$.u')"
        " AND m.client_msg_id = json_extract(k.value, '$.m')"
    ).columns(*_COLUMNS),
    insert=text(
        "INSERT INTO messages"
        " (conversation_id, seq, sender_id, client_msg_id, kind, body, created_at)"
        " SELECT json_extract(value, '$.c'), json_extract(value, '$.s'),"
        " json_extract(value, '$.u'), json_extract(value, '$.m'), json_extract(value, '$.k'),"
        " json_extract(value, '$.b'), :created_at FROM json_each(:rows)"
        " RETURNING id, conversation_id, seq"
    )
    .bindparams(bindparam("created_at", type_=UTCDateTime()))
    .columns(_messages.c.id, _messages.c.conversation_id, _messages.c.seq),
    body_as_text=False,
)


def _json_sql(conn: AsyncConnection) -> _JsonBatchSQL | None:
    dialect = conn.dialect
    version = tuple((dialect.server_version_info or ())[:2])
    if dialect.name == "postgresql":
        return _PG_SQL
    if dialect.name == "sqlite" and version >= (3, 38):
        return _SQLITE_SQL
    if getattr(dialect, "is_mariadb", False) and version >= (10, 6):
        return _MARIADB_SQL
    return None  # MySQL, older SQLite/MariaDB: insertmanyvalues and a row-value IN


@dataclass(slots=True)
class SeqCounter:
    """The last seq a conversation has assigned. Owned by the conversation entity's state; the
    writer advances it as it assigns seqs and restores it if the transaction fails."""

    last_seq: int = 0


@dataclass(frozen=True, slots=True)
class MessageDraft:
    """A message to append, before it has a seq."""

    conversation_id: int
    sender_id: int
    client_msg_id: str
    kind: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
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


async def store_batch(
    db: Database,
    items: Sequence[tuple[MessageDraft, SeqCounter]],
    conn: AsyncConnection | None = None,
    *,
    portable: bool = False,
) -> list[StoredMessage]:
    """Commit ``items`` as one batch (``write_batch``); if it fails, restore the counters and
    re-raise, so no seq is consumed by a batch that did not commit.

    On PostgreSQL the batch is a single INSERT statement, atomic by itself, so it runs in
    autocommit mode: SELECT + INSERT are two round trips where BEGIN ... COMMIT would add two.
    Elsewhere SQLAlchemy may split a big batch into several INSERTs, so it runs in a transaction.
    ``conn``: a long-lived AUTOCOMMIT connection to use on PostgreSQL instead of the pool.
    ``portable``: see ``write_batch``; always in a transaction.
    """
    before = [(counter, counter.last_seq) for _, counter in items]
    try:
        if db.dialect == "postgresql" and not portable:
            if conn is not None:
                results = await write_batch(conn, items)
                await conn.commit()  # ends SQLAlchemy's bookkeeping transaction; no round trip
                return results
            async with db.autocommit_engine.connect() as own:
                return await write_batch(own, items)
        async with db.engine.begin() as own:
            return await write_batch(own, items, portable=portable)
    except BaseException:
        # Captured before any seq was assigned, so repeats of a counter hold the same value.
        for counter, last_seq in before:
            counter.last_seq = last_seq
        raise


async def write_batch(
    conn: AsyncConnection,
    items: Sequence[tuple[MessageDraft, SeqCounter]],
    *,
    portable: bool = False,
) -> list[StoredMessage]:
    """Store ``items`` on ``conn`` and return one result per item, in order.

    Advances the counters; the caller restores them if the batch does not commit. A draft
    whose ``(sender_id, client_msg_id)`` is stored, or appears earlier in ``items``, gets that
    message with ``duplicate=True`` and consumes no seq. ``portable`` uses the SQL every engine
    runs (insertmanyvalues, row-value IN) even where a JSON batch statement exists, as on MySQL.
    """
    sql = None if portable else _json_sql(conn)
    keys = list(dict.fromkeys((d.sender_id, d.client_msg_id) for d, _ in items))
    existing = await (_existing(conn, keys) if sql is None else _existing_json(conn, sql, keys))

    new: list[MessageDraft] = []
    seqs: list[int] = []
    # Per item: an index into ``new``, or the key of a stored / earlier message.
    slots: list[int | tuple[int, str]] = []
    first_in_batch: dict[tuple[int, str], int] = {}
    for draft, counter in items:
        key = (draft.sender_id, draft.client_msg_id)
        if key in existing or key in first_in_batch:
            slots.append(key)
            continue
        counter.last_seq += 1
        first_in_batch[key] = len(new)
        slots.append(len(new))
        new.append(draft)
        seqs.append(counter.last_seq)

    now = utcnow()
    fresh: list[StoredMessage] = []
    if new:
        ids = await (
            _insert(conn, new, seqs, now)
            if sql is None
            else _insert_json(conn, sql, new, seqs, now)
        )
        fresh = [
            StoredMessage(
                ids[(d.conversation_id, seq)],
                d.conversation_id,
                seq,
                d.sender_id,
                d.client_msg_id,
                d.kind,
                d.body,
                now,
            )
            for d, seq in zip(new, seqs, strict=True)
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


async def _existing(
    conn: AsyncConnection, keys: list[tuple[int, str]]
) -> dict[tuple[int, str], StoredMessage]:
    rows = await conn.execute(
        select(*_COLUMNS).where(tuple_(_messages.c.sender_id, _messages.c.client_msg_id).in_(keys))
    )
    return {(r.sender_id, r.client_msg_id): StoredMessage.from_row(r, duplicate=True) for r in rows}


async def _existing_json(
    conn: AsyncConnection, sql: _JsonBatchSQL, keys: list[tuple[int, str]]
) -> dict[tuple[int, str], StoredMessage]:
    doc = json.dumps([{"u": u, "m": m} for u, m in keys])
    rows = await conn.execute(sql.existing, {"keys": doc})
    return {(r.sender_id, r.client_msg_id): StoredMessage.from_row(r, duplicate=True) for r in rows}


async def _insert(
    conn: AsyncConnection, drafts: list[MessageDraft], seqs: list[int], now: datetime
) -> dict[tuple[int, int], int]:
    """One multi-row INSERT (insertmanyvalues); new ids by (conversation_id, seq)."""
    params = [
        {
            "conversation_id": d.conversation_id,
            "seq": seq,
            "sender_id": d.sender_id,
            "client_msg_id": d.client_msg_id,
            "kind": d.kind,
            "body": d.body,
            "created_at": now,
        }
        for d, seq in zip(drafts, seqs, strict=True)
    ]
    stmt = insert(_messages).returning(_messages.c.id, _messages.c.conversation_id, _messages.c.seq)
    rows = await conn.execute(stmt, params)
    return {(r.conversation_id, r.seq): r.id for r in rows}


async def _insert_json(
    conn: AsyncConnection,
    sql: _JsonBatchSQL,
    drafts: list[MessageDraft],
    seqs: list[int],
    now: datetime,
) -> dict[tuple[int, int], int]:
    """One INSERT ... SELECT over the batch as a JSON document; ids by (conversation_id, seq)."""
    dumps = json.dumps
    as_text = sql.body_as_text
    doc = dumps(
        [
            {
                "c": d.conversation_id,
                "s": seq,
                "u": d.sender_id,
                "m": d.client_msg_id,
                "k": d.kind,
                "b": dumps(d.body) if as_text else d.body,
            }
            for d, seq in zip(drafts, seqs, strict=True)
        ]
    )
    rows = await conn.execute(sql.insert, {"rows": doc, "created_at": now})
    return {(r.conversation_id, r.seq): r.id for r in rows}
