"""Full-text search over the text messages of the conversations a user belongs to.

The index lives in the database, kept in sync by the database itself (migration 0004), so the
group-commit writer (``storage.appends``) runs exactly the statements it ran before:

- PostgreSQL: a GIN expression index on ``to_tsvector('simple', body->>'text')`` for
  ``kind = 'text'``; queries use ``plainto_tsquery('simple', ...)``. No stored column: the
  tsvector is computed when a row is indexed (and on recheck).
- MySQL / MariaDB: a STORED generated column ``search_text`` (the text of a text message, in a
  case- and accent-insensitive collation) with an InnoDB FULLTEXT index; boolean mode with every
  word required. Words InnoDB does not index (shorter than ``innodb_ft_min_token_size``, 3 by
  default, or on its stopword list) are matched by a word-boundary REGEXP on the rows instead.
- SQLite: an FTS5 table ``messages_fts`` over the view ``messages_search`` (external content:
  the text is not stored twice), maintained by AFTER INSERT/UPDATE/DELETE triggers on messages.

Every engine answers "all the words, whole words, case-insensitively", newest first; the order
is the message id (assigned at commit), and the cursor is the last id returned. Membership is a
join on ``memberships``: a user removed from a conversation stops finding its messages at once,
and a message that is updated or deleted leaves (or changes in) the index with its row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.db import Database
from storage.models import Message
from warbler.errors import ErrorCode, WarblerError

# A page of 100 and one more, which tells the caller whether another page exists.
SEARCH_LIMIT_MAX = 101
SEARCH_TERMS_MAX = 16
# Names of the engine-specific search objects (not in the SQLModel metadata: the schema
# comparison and autogenerate skip them, see ``is_search_object``).
FTS_TABLE = "messages_fts"
FTS_VIEW = "messages_search"
PG_INDEX = "ix_messages_search"
MYSQL_COLUMN = "search_text"
MYSQL_INDEX = "ft_messages_search_text"

# Letters and digits: what every engine's tokenizer keeps (PostgreSQL's parser, FTS5's
# unicode61 and InnoDB all split on punctuation and spaces; only InnoDB keeps "_").
_WORD = re.compile(r"[^\W_]+")
_INNODB_DEFAULT_MIN_TOKEN = 3


def search_terms(query: str) -> list[str]:
    """The distinct words of ``query``, lowercased, in order (at most ``SEARCH_TERMS_MAX``)."""
    words = dict.fromkeys(w.lower() for w in _WORD.findall(query))
    return list(words)[:SEARCH_TERMS_MAX]


def is_search_object(name: str | None, type_: str, parent_names: Any = None) -> bool:
    """True for the search index's own tables, views, columns and indexes (FTS5's shadow
    tables are ``messages_fts_data`` and the like)."""
    if not name:
        return False
    return (
        name == FTS_VIEW
        or name == FTS_TABLE
        or name.startswith(FTS_TABLE + "_")
        or name in (PG_INDEX, MYSQL_COLUMN, MYSQL_INDEX)
    )


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A text message that matched: ``id`` orders hits (newest first) and is the cursor."""

    id: int
    conversation_id: int
    seq: int
    sender_id: int
    text: str
    created_at: datetime


_messages: Table = Message.__table__  # type: ignore[attr-defined]
# The result columns, typed by the table's own columns (JSON body, UTC times).
_RESULT = tuple(
    _messages.c[name]
    for name in ("id", "conversation_id", "seq", "sender_id", "body", "created_at")
)
_COLUMNS = "m.id, m.conversation_id, m.seq, m.sender_id, m.body, m.created_at"
_MEMBER_JOIN = (
    " JOIN memberships AS ms ON ms.conversation_id = m.conversation_id AND ms.user_id = :user_id"
)


class SearchStore:
    """Searches messages in the conversations a user currently belongs to."""

    def __init__(self, db: Database) -> None:
        self._db = db
        # InnoDB's smallest indexed word and its stopwords, read once per store (MySQL only).
        self._innodb: tuple[int, frozenset[str]] | None = None

    async def search_messages(
        self,
        user_id: int,
        terms: list[str],
        *,
        conversation_id: int | None = None,
        before_id: int | None = None,
        limit: int = 20,
    ) -> list[SearchHit]:
        """Up to ``limit`` text messages holding every word of ``terms`` (see
        ``search_terms``), newest first, from the user's conversations (only
        ``conversation_id`` if given; a conversation the user is not in gives no hits), with
        ids below ``before_id`` if given."""
        if not 1 <= limit <= SEARCH_LIMIT_MAX:
            raise WarblerError(ErrorCode.VALIDATION, f"limit must be 1-{SEARCH_LIMIT_MAX}")
        if not terms:
            raise WarblerError(ErrorCode.VALIDATION, "the query has no words to search for")
        params: dict[str, Any] = {"user_id": user_id, "limit": limit}
        filters = ""
        if conversation_id is not None:
            filters += " AND m.conversation_id = :conversation_id"
            params["conversation_id"] = conversation_id
        if before_id is not None:
            filters += " AND m.id < :before_id"
            params["before_id"] = before_id
        async with self._db.engine.connect() as conn:
            if self._db.dialect == "postgresql":
                sql = (
                    f"SELECT {_COLUMNS} FROM messages AS m{_MEMBER_JOIN}"
                    " WHERE m.kind = 'text'"
                    " AND to_tsvector('simple', m.body ->> 'text')"
                    " @@ plainto_tsquery('simple', :q)"
                    f"{filters} ORDER BY m.id DESC LIMIT :limit"
                )
                params["q"] = " ".join(terms)
            elif self._db.dialect == "sqlite":
                sql = (
                    f"SELECT {_COLUMNS} FROM {FTS_TABLE} AS f"
                    f" JOIN messages AS m ON m.id = f.rowid{_MEMBER_JOIN}"
                    f" WHERE {FTS_TABLE} MATCH :q AND m.kind = 'text'"
                    f"{filters} ORDER BY f.rowid DESC LIMIT :limit"
                )
                # Each word a quoted string: FTS5 operators in the query stay plain words.
                params["q"] = " ".join('"' + t.replace('"', '""') + '"' for t in terms)
            else:
                sql = await self._mysql_sql(conn, terms, params, filters)
            rows = await conn.execute(text(sql).columns(*_RESULT), params)
            return [_hit(r) for r in rows]

    async def _mysql_sql(
        self, conn: AsyncConnection, terms: list[str], params: dict[str, Any], filters: str
    ) -> str:
        min_token, stopwords = await self._innodb_words(conn)
        indexed = [t for t in terms if len(t) >= min_token and t not in stopwords]
        others = [t for t in terms if t not in indexed]
        where = "m.search_text IS NOT NULL"
        if indexed:
            # Letters and digits only (search_terms): no boolean-mode operator can get in.
            where += " AND MATCH (m.search_text) AGAINST (:q IN BOOLEAN MODE)"
            params["q"] = " ".join("+" + t for t in indexed)
        for i, term in enumerate(others):
            # The column's collation makes REGEXP case-insensitive, like MATCH.
            where += f" AND m.search_text REGEXP :w{i}"
            params[f"w{i}"] = rf"\b{term}\b"
        return (
            f"SELECT {_COLUMNS} FROM messages AS m{_MEMBER_JOIN}"
            f" WHERE {where}{filters} ORDER BY m.id DESC LIMIT :limit"
        )

    async def _innodb_words(self, conn: AsyncConnection) -> tuple[int, frozenset[str]]:
        if self._innodb is None:
            row = (
                await conn.execute(
                    text("SELECT @@innodb_ft_min_token_size, @@innodb_ft_enable_stopword")
                )
            ).one()
            min_token = int(row[0] or _INNODB_DEFAULT_MIN_TOKEN)
            stopwords: frozenset[str] = frozenset()
            if int(row[1] or 0):
                # The default list (a server or table stopword list replaces it; see
                # docs/architecture.md).
                found = await conn.execute(
                    text("SELECT value FROM INFORMATION_SCHEMA.INNODB_FT_DEFAULT_STOPWORD")
                )
                stopwords = frozenset(str(v).lower() for (v,) in found)
            self._innodb = (min_token, stopwords)
        return self._innodb


def _hit(row: Any) -> SearchHit:
    value = row.body.get("text") if isinstance(row.body, dict) else None
    return SearchHit(
        id=int(row.id),
        conversation_id=int(row.conversation_id),
        seq=int(row.seq),
        sender_id=int(row.sender_id),
        text=value if isinstance(value, str) else "",
        created_at=row.created_at,
    )
