"""Migrations from an empty database, concurrent migrate(), and models == migrated schema."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlmodel import SQLModel

from storage import Database
from storage.db import alembic_config
from storage.search import is_search_object
from warbler.config import Settings
from warbler.errors import ErrorCode, WarblerError

TABLES = {"users", "refresh_tokens", "conversations", "memberships", "messages", "checkpoints"}


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _schema_diff(conn: Connection) -> list[Any]:
    opts = {
        "compare_type": True,
        # The search index (migration 0004) is engine-specific DDL outside the models.
        "include_name": lambda name, type_, parents: not is_search_object(name, type_, parents),
    }
    diffs: list[Any] = compare_metadata(
        MigrationContext.configure(conn, opts=opts), SQLModel.metadata
    )
    if conn.dialect.name in ("mysql", "mariadb"):
        # MariaDB stores JSON as LONGTEXT (with a json_valid check); reflection sees LONGTEXT.
        diffs = [
            d
            for d in diffs
            if not (isinstance(d, list) and d[0][0] == "modify_type" and d[0][3] == "body")
        ]
    return diffs


async def _version(db: Database) -> str | None:
    async with db.engine.connect() as conn:
        version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
        return None if version is None else str(version)


async def test_migrate_creates_every_table_from_empty(fresh_url: str) -> None:
    db = Database(fresh_url)
    try:
        async with db.engine.connect() as conn:
            before = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert not before & TABLES
        await db.migrate()
        async with db.engine.connect() as conn:
            after = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
            assert TABLES | {"alembic_version"} <= after
            assert await conn.run_sync(_schema_diff) == []
        assert await _version(db) == _head()
    finally:
        await db.close()


async def test_migrate_twice_is_a_noop(fresh_url: str) -> None:
    db = Database(fresh_url)
    try:
        await db.migrate()
        await db.migrate()
        assert await _version(db) == _head()
    finally:
        await db.close()


async def test_migrate_racing_in_one_process(fresh_url: str) -> None:
    first, second = Database(fresh_url), Database(fresh_url)
    try:
        await asyncio.gather(first.migrate(), second.migrate())
        assert await _version(first) == _head()
    finally:
        await first.close()
        await second.close()


async def test_migrate_racing_processes(fresh_url: str) -> None:
    code = (
        "import asyncio, sys\n"
        "from storage import Database\n"
        "async def main():\n"
        "    db = Database(sys.argv[1])\n"
        "    await db.migrate()\n"
        "    await db.close()\n"
        "asyncio.run(main())\n"
    )
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, fresh_url, stderr=subprocess.PIPE
        )
        for _ in range(3)
    ]
    results = await asyncio.gather(*(p.communicate() for p in procs))
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode()
    db = Database(fresh_url)
    try:
        assert await _version(db) == _head()
    finally:
        await db.close()


async def test_session_database_is_at_head(db: Database) -> None:
    assert await _version(db) == _head()


@pytest.mark.parametrize(
    ("url", "dialect"),
    [
        ("sqlite:////tmp/x.db", "sqlite"),
        ("postgresql://u@h/db", "postgresql"),
        ("postgresql+psycopg://u@h/db", "postgresql"),
        ("mysql://u@h/db", "mysql"),
        ("mysql+pymysql://u@h/db", "mysql"),
        ("mariadb://u@h/db", "mysql"),
    ],
)
async def test_from_settings_picks_an_async_driver(url: str, dialect: str) -> None:
    db = Database.from_settings(Settings(database_url=url))
    try:
        assert db.dialect == dialect
        assert db.engine.dialect.is_async
    finally:
        await db.close()


def test_unknown_database_scheme_is_a_config_error() -> None:
    with pytest.raises(WarblerError) as err:
        Database("oracle+oracledb://u@h/db")
    assert err.value.code is ErrorCode.CONFIG


async def test_in_memory_sqlite_migrates_and_keeps_its_data() -> None:
    # For unit tests that want a throwaway database: one shared connection (StaticPool).
    from storage import UserStore

    db = Database("sqlite+aiosqlite://")
    try:
        await db.migrate()
        user = await UserStore(db).create_user("memory", "h", "M")
        assert await UserStore(db).get_user(user.id) is not None
    finally:
        await db.close()


async def test_sqlite_uses_wal_and_a_busy_timeout(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'wal.db'}")
    try:
        async with db.engine.connect() as conn:
            assert (await conn.scalar(text("PRAGMA journal_mode"))) == "wal"
            assert (await conn.scalar(text("PRAGMA busy_timeout"))) >= 1000
            assert (await conn.scalar(text("PRAGMA foreign_keys"))) == 1
    finally:
        await db.close()
