"""The SQL database: one async engine, sessions, and programmatic Alembic migrations."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import zlib
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool
from sqlmodel.ext.asyncio.session import AsyncSession

from warbler.config import Settings
from warbler.errors import ErrorCode, WarblerError

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Names the cross-process migration lock on PostgreSQL (advisory lock id) and MySQL (GET_LOCK).
_LOCK_NAME = "warbler_migrate"
_PG_LOCK_ID = zlib.crc32(_LOCK_NAME.encode())
_MYSQL_LOCK_TIMEOUT_S = 120

_DIALECTS = {"sqlite": "sqlite", "postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}


class Database:
    """An async SQLAlchemy engine for SQLite (aiosqlite), PostgreSQL (asyncpg) or MySQL/MariaDB
    (aiomysql), with a session factory and ``migrate()``."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        if backend not in _DIALECTS:
            raise WarblerError(ErrorCode.CONFIG, f"unsupported database URL: {parsed!r}")
        self.dialect: str = _DIALECTS[backend]
        self.url = parsed
        kwargs: dict[str, Any] = {"echo": echo}
        if self.dialect == "sqlite":
            database = parsed.database or ""
            if database in ("", ":memory:"):
                # One shared connection, or every session would see its own empty database.
                kwargs["poolclass"] = StaticPool
                kwargs["connect_args"] = {"check_same_thread": False}
            else:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
        elif self.dialect == "mysql":
            if "charset" not in parsed.query:
                parsed = parsed.update_query_dict({"charset": "utf8mb4"})
            kwargs.update(pool_recycle=3600, pool_pre_ping=True, pool_size=10, max_overflow=20)
        else:
            kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=20)
        self.engine: AsyncEngine = create_async_engine(parsed, **kwargs)
        # The same pool, in autocommit mode: for work that is one atomic statement.
        self.autocommit_engine: AsyncEngine = self.engine.execution_options(
            isolation_level="AUTOCOMMIT"
        )
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_on_connect)
        self._sessionmaker_kwargs: dict[str, Any] = {"expire_on_commit": False}

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """The database of ``settings.async_database_url`` (by default SQLite under data_dir)."""
        return cls(settings.async_database_url)

    def session(self) -> AsyncSession:
        """A new session; objects stay usable after commit (``expire_on_commit=False``)."""
        return AsyncSession(self.engine, **self._sessionmaker_kwargs)

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision.

        A no-op on an up-to-date database. Safe when several processes call it at once: they
        serialize on a lock (PostgreSQL advisory lock, MySQL GET_LOCK, a file lock next to a
        SQLite file), so the second one finds the schema at head and does nothing.
        """
        if self.dialect == "sqlite":
            database = self.url.database or ""
            if database in ("", ":memory:"):
                await self._upgrade()
                return
            lock_path = Path(database + ".migrate.lock")
            fd = await asyncio.to_thread(_flock, lock_path)
            try:
                await self._upgrade()
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        async with self.engine.connect() as conn:
            await self._lock(conn)
            try:
                await conn.commit()
                await conn.run_sync(_run_alembic_upgrade)
                await conn.commit()
            finally:
                await self._unlock(conn)

    async def _upgrade(self) -> None:
        async with self.engine.connect() as conn:
            await conn.run_sync(_run_alembic_upgrade)
            await conn.commit()

    async def _lock(self, conn: AsyncConnection) -> None:
        if self.dialect == "postgresql":
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_ID})
        else:
            got = await conn.scalar(
                text("SELECT GET_LOCK(:n, :t)"), {"n": _LOCK_NAME, "t": _MYSQL_LOCK_TIMEOUT_S}
            )
            if got != 1:
                raise WarblerError(
                    ErrorCode.UNAVAILABLE, "timed out waiting for another process's migration"
                )

    async def _unlock(self, conn: AsyncConnection) -> None:
        if self.dialect == "postgresql":
            await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_ID})
        else:
            await conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": _LOCK_NAME})
        await conn.commit()


def alembic_config(connection: Connection | None = None) -> Any:
    """An Alembic ``Config`` pointing at the packaged migration scripts (no alembic.ini needed)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _run_alembic_upgrade(connection: Connection) -> None:
    from alembic import command

    command.upgrade(alembic_config(connection), "head")


def _sqlite_on_connect(dbapi_conn: DBAPIConnection, record: ConnectionPoolEntry) -> None:
    # WAL lets readers run beside the writer; busy_timeout waits for a lock instead of failing;
    # synchronous=NORMAL in WAL mode loses nothing when a process dies (only on power loss).
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _flock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd
