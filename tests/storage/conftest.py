"""Fixtures for the storage tests: stores over the session database, a user factory, keys."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

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
