"""Fixtures for the actor tests: per-test settings and services over the real SQL and Redis."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from actor_helpers import MakeUser

from actors.context import EntityContext
from actors.directory import initial_map
from actors.directory_store import DirectoryStore
from actors.host import HostCore
from storage import Database, User, UserStore
from warbler.config import Settings

_counter = itertools.count()


@pytest.fixture
def test_settings(settings: Settings, uid: str) -> Settings:
    """The session settings with a namespace of this test's own (Redis keys, channels, map)."""
    return settings.model_copy(update={"namespace": f"{settings.namespace}-{uid}"})


@pytest.fixture
async def ctx(
    test_settings: Settings, db: Database, redis: aioredis.Redis
) -> AsyncIterator[EntityContext]:
    """Services as a host has them, with the group-commit writer running."""
    context = EntityContext.build(test_settings, db, redis)
    await context.start()
    yield context
    await context.stop()


@pytest.fixture
def make_user(db: Database, uid: str) -> MakeUser:
    """Creates users with names unique across tests and runs."""
    users = UserStore(db)

    async def make(label: str) -> User:
        return await users.create_user(f"{label}-{uid}-{next(_counter)}", "argon2-hash", label)

    return make


@pytest.fixture
async def host_factory(
    test_settings: Settings, db: Database, redis: aioredis.Redis
) -> AsyncIterator[Callable[..., Awaitable[HostCore]]]:
    """Builds started HostCores (no Ray) that all serve a one-host map; stops them after."""
    hosts: list[HostCore] = []

    async def make(name: str = "host-0", **overrides: Any) -> HostCore:
        settings = test_settings.model_copy(update=overrides)
        ctx = EntityContext.build(settings, db, redis)
        directory = DirectoryStore(redis, ctx.keys)
        await directory.create(initial_map([name], settings.num_shards))
        host = HostCore(name, ctx, directory)
        await host.start()
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        await host.stop()
