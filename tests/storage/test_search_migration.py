"""Migration 0004 on a database that already holds messages: the upgrade from 0003 indexes
what was stored before it, and the downgrade removes the index (on the session's engine, in a
fresh database of the test's own: the session database's revision is never touched)."""

from __future__ import annotations

import uuid
from typing import Any

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from storage import (
    ConversationStore,
    Database,
    GroupCommitWriter,
    MessageDraft,
    SeqCounter,
    StoredMessage,
    UserStore,
)
from storage.db import alembic_config
from storage.search import (
    FTS_TABLE,
    FTS_VIEW,
    MYSQL_COLUMN,
    MYSQL_INDEX,
    PG_INDEX,
    SearchStore,
    is_search_object,
)

BEFORE_SEARCH = "0003"
# What 0004 creates on each engine (SQLite adds FTS5 shadow tables and triggers besides).
INDEX_OBJECTS = {
    "postgresql": {PG_INDEX},
    "mysql": {MYSQL_COLUMN, MYSQL_INDEX},
    "sqlite": {FTS_TABLE, FTS_VIEW},
}


async def _alembic(db: Database, action: str, revision: str) -> None:
    """``alembic upgrade|downgrade <revision>`` on ``db``, through the project's config."""

    def run(conn: Connection) -> None:
        getattr(command, action)(alembic_config(conn), revision)

    async with db.engine.connect() as conn:
        await conn.run_sync(run)
        await conn.commit()


async def _version(db: Database) -> str:
    async with db.engine.connect() as conn:
        return str(await conn.scalar(text("SELECT version_num FROM alembic_version")))


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def _search_objects(db: Database) -> set[str]:
    """The names of the search index's objects that exist (tables, views, columns, indexes)."""
    if db.dialect == "postgresql":
        sql = "SELECT indexname FROM pg_indexes WHERE tablename = 'messages'"
    elif db.dialect == "mysql":
        sql = (
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = DATABASE() AND table_name = 'messages'"
            " UNION SELECT index_name FROM information_schema.statistics"
            " WHERE table_schema = DATABASE() AND table_name = 'messages'"
        )
    else:
        sql = "SELECT name FROM sqlite_master"
    async with db.engine.connect() as conn:
        names = {str(name) for (name,) in await conn.execute(text(sql))}
    return {name for name in names if is_search_object(name, "")}


Row = tuple[int, int, str, dict[str, Any]]  # conversation, sender, kind, body


async def _write(
    db: Database, counters: dict[int, SeqCounter], rows: list[Row]
) -> list[StoredMessage]:
    """Append through the group-commit writer in one batch (the real write path); ``counters``
    carries each conversation's last seq from one call to the next."""
    drafts = [
        MessageDraft(conv, sender, uuid.uuid4().hex, kind, body)
        for conv, sender, kind, body in rows
    ]
    writer = GroupCommitWriter(db, max_delay_ms=20)
    await writer.start()
    try:
        futures = [
            writer.submit(d, counters.setdefault(d.conversation_id, SeqCounter())) for d in drafts
        ]
        return [await f for f in futures]
    finally:
        await writer.stop()


async def _found(db: Database, user_id: int, *terms: str) -> list[tuple[int, int]]:
    hits = await SearchStore(db).search_messages(user_id, list(terms))
    return [(h.conversation_id, h.seq) for h in hits]


async def test_upgrade_from_0003_finds_the_messages_stored_before(fresh_url: str) -> None:
    db = Database(fresh_url)
    try:
        await _alembic(db, "upgrade", BEFORE_SEARCH)
        assert await _version(db) == BEFORE_SEARCH
        assert await _search_objects(db) == set()

        # Messages stored with no index: every kind and shape 0004 has to cope with.
        users, conversations = UserStore(db), ConversationStore(db)
        alice, bob, eve = [
            await users.create_user(name, "argon2-hash", name.title())
            for name in ("alice", "bob", "eve")
        ]
        group = (await conversations.create_group("old times", alice.id, [bob.id])).id
        private = (await conversations.create_group("alice only", alice.id, [])).id
        counters: dict[int, SeqCounter] = {}
        stored = await _write(
            db,
            counters,
            [
                (group, alice.id, "text", {"text": "Quince jam, from before the index"}),
                (group, alice.id, "json", {"text": "quince in a json body is not text"}),
                (group, bob.id, "text", {"text": "QUINCE season is here"}),
                (group, alice.id, "text", {"text": "Café au lait, no fruit"}),
                (private, alice.id, "text", {"text": "my quince secret"}),
                (group, alice.id, "text", {"n": 3}),  # no string: never indexed
            ],
        )
        assert [(m.conversation_id, m.seq) for m in stored] == [
            (group, 1),
            (group, 2),
            (group, 3),
            (group, 4),
            (private, 1),
            (group, 5),
        ]

        await db.migrate()
        assert await _version(db) == _head()
        assert await _search_objects(db) >= INDEX_OBJECTS[db.dialect]
        # Newest first, text messages only, in the user's own conversations.
        assert await _found(db, alice.id, "quince") == [(private, 1), (group, 3), (group, 1)]
        assert await _found(db, bob.id, "quince") == [(group, 3), (group, 1)]
        assert await _found(db, eve.id, "quince") == []
        assert await _found(db, alice.id, "café", "lait") == [(group, 4)]
        assert await _found(db, alice.id, "quince", "jam") == [(group, 1)]

        # Messages written after the upgrade are indexed as they are stored.
        after = await _write(db, counters, [(group, bob.id, "text", {"text": "quince"})])
        assert await _found(db, bob.id, "quince") == [(group, after[0].seq), (group, 3), (group, 1)]

        # Down to 0003 removes every search object; up again indexes all of it once more.
        await _alembic(db, "downgrade", BEFORE_SEARCH)
        assert await _version(db) == BEFORE_SEARCH
        assert await _search_objects(db) == set()
        await db.migrate()
        assert await _found(db, alice.id, "quince") == [
            (group, after[0].seq),
            (private, 1),
            (group, 3),
            (group, 1),
        ]
    finally:
        await db.close()
