"""Full-text search over text messages (storage/search.py), one index per engine.

- PostgreSQL: a GIN expression index on ``to_tsvector('simple', body->>'text')``, partial on
  ``kind = 'text'``. Building it indexes the rows already there.
- MySQL / MariaDB: a STORED generated column ``search_text`` (the text of a text message, NULL
  otherwise, in utf8mb4_unicode_ci so that matching ignores case) and an InnoDB FULLTEXT index
  on it. Both are computed for the existing rows by the ALTER TABLE (a table rebuild).
- SQLite: the view ``messages_search`` (id, text of text messages), the FTS5 table
  ``messages_fts`` with the view as external content, triggers that keep it in step with
  ``messages``, and a ``rebuild`` that indexes the existing rows.

Every statement checks what exists first: ``Database.migrate()`` serializes concurrent runs on
a lock, and a run that died half-way (MySQL DDL is not transactional) can simply run again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out here rather than imported from storage.search (see 0001).
_PG_INDEX = "ix_messages_search"
_MYSQL_COLUMN = "search_text"
_MYSQL_INDEX = "ft_messages_search_text"
_FTS = "messages_fts"
_VIEW = "messages_search"
_TEXT = "json_extract({row}.body, '$.text')"

_SQLITE_UP = [
    f"CREATE VIEW IF NOT EXISTS {_VIEW} AS"
    " SELECT id, json_extract(body, '$.text') AS text FROM messages WHERE kind = 'text'",
    f"CREATE VIRTUAL TABLE IF NOT EXISTS {_FTS} USING fts5("
    f"text, content='{_VIEW}', content_rowid='id', tokenize='unicode61 remove_diacritics 2')",
    # FTS5's external-content protocol: add the new text; remove exactly the old text with the
    # 'delete' command (the trigger still sees the old row).
    f"CREATE TRIGGER IF NOT EXISTS {_FTS}_ai AFTER INSERT ON messages"
    " WHEN new.kind = 'text' BEGIN"
    f" INSERT INTO {_FTS} (rowid, text) VALUES (new.id, {_TEXT.format(row='new')}); END",
    f"CREATE TRIGGER IF NOT EXISTS {_FTS}_ad AFTER DELETE ON messages"
    " WHEN old.kind = 'text' BEGIN"
    f" INSERT INTO {_FTS} ({_FTS}, rowid, text)"
    f" VALUES ('delete', old.id, {_TEXT.format(row='old')}); END",
    f"CREATE TRIGGER IF NOT EXISTS {_FTS}_au AFTER UPDATE OF kind, body ON messages BEGIN"
    f" INSERT INTO {_FTS} ({_FTS}, rowid, text)"
    f" SELECT 'delete', old.id, {_TEXT.format(row='old')} WHERE old.kind = 'text';"
    f" INSERT INTO {_FTS} (rowid, text)"
    f" SELECT new.id, {_TEXT.format(row='new')} WHERE new.kind = 'text'; END",
    # Index what is already stored (a no-op on an empty table; idempotent).
    f"INSERT INTO {_FTS} ({_FTS}) VALUES ('rebuild')",
]
_SQLITE_DOWN = [
    f"DROP TRIGGER IF EXISTS {_FTS}_au",
    f"DROP TRIGGER IF EXISTS {_FTS}_ad",
    f"DROP TRIGGER IF EXISTS {_FTS}_ai",
    f"DROP TABLE IF EXISTS {_FTS}",
    f"DROP VIEW IF EXISTS {_VIEW}",
]


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    if dialect == "postgresql":
        op.execute(
            f"CREATE INDEX IF NOT EXISTS {_PG_INDEX} ON messages"
            " USING gin (to_tsvector('simple', body ->> 'text')) WHERE kind = 'text'"
        )
    elif dialect in ("mysql", "mariadb"):
        columns = {c["name"] for c in sa.inspect(bind).get_columns("messages")}
        if _MYSQL_COLUMN not in columns:
            op.execute(
                f"ALTER TABLE messages ADD COLUMN {_MYSQL_COLUMN} LONGTEXT"
                " CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                " GENERATED ALWAYS AS (CASE WHEN kind = 'text'"
                " THEN JSON_UNQUOTE(JSON_EXTRACT(body, '$.text')) END) STORED"
            )
        indexes = {i["name"] for i in sa.inspect(bind).get_indexes("messages")}
        if _MYSQL_INDEX not in indexes:
            op.execute(f"ALTER TABLE messages ADD FULLTEXT INDEX {_MYSQL_INDEX} ({_MYSQL_COLUMN})")
    elif dialect == "sqlite":
        for statement in _SQLITE_UP:
            op.execute(statement)


def downgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    if dialect == "postgresql":
        op.execute(f"DROP INDEX IF EXISTS {_PG_INDEX}")
    elif dialect in ("mysql", "mariadb"):
        op.execute(f"ALTER TABLE messages DROP INDEX {_MYSQL_INDEX}")
        op.execute(f"ALTER TABLE messages DROP COLUMN {_MYSQL_COLUMN}")
    elif dialect == "sqlite":
        for statement in _SQLITE_DOWN:
            op.execute(statement)
