"""Fixtures for the storage tests: stores over the session database, a user factory, keys, and
fresh empty databases for migration tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.engine import make_url

from storage import (
    CheckpointStore,
    ConversationStore,
    Database,
    Keys,
    MessageStore,
    User,
    UserStore,
)
from warbler.config import Settings

MakeUser = Callable[[str], Awaitable[User]]


@pytest.fixture
def users(db: Database) -> UserStore:
    return UserStore(db)


@pytest.fixture
def conversations(db: Database) -> ConversationStore:
    return ConversationStore(db)


@pytest.fixture
def messages(db: Database) -> MessageStore:
    return MessageStore(db)


@pytest.fixture
def checkpoints(db: Database) -> CheckpointStore:
    return CheckpointStore(db)


@pytest.fixture
async def keys(settings: Settings, uid: str, redis: aioredis.Redis) -> AsyncIterator[Keys]:
    """A namespace of this test's own; its keys are deleted afterwards (Redis may be shared)."""
    namespace = Keys(f"{settings.namespace}-{uid}")
    yield namespace
    stale = [key async for key in redis.scan_iter(match=f"{namespace.namespace}:*")]
    if stale:
        await redis.delete(*stale)


@pytest.fixture
def make_user(users: UserStore, uid: str) -> MakeUser:
    """Creates users named ``<label>-<uid>``, unique across tests and runs."""

    async def make(label: str) -> User:
        return await users.create_user(f"{label}-{uid}", "argon2-hash", label.title())

    return make


@pytest.fixture
async def fresh_url(settings: Settings, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a new, empty database on the session's engine, dropped afterwards."""
    url = make_url(settings.async_database_url)
    if url.get_backend_name() == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        return
    name = f"warbler_mig_{uuid.uuid4().hex[:10]}"
    admin = Database(settings.async_database_url)
    ddl_engine = admin.engine.execution_options(isolation_level="AUTOCOMMIT")
    async with ddl_engine.connect() as conn:
        await conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        async with ddl_engine.connect() as conn:
            if admin.dialect == "postgresql":
                await conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            else:
                await conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        await admin.close()
