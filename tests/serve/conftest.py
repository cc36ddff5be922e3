"""Fixtures for the gateway tests: actor hosts and the real Serve app on the session Ray cluster.

Serve's ingress reads its settings when the cluster starts, so the HAProxy variables are put in
this process's environment at configure time, before the session ``ray_cluster`` fixture calls
``ray.init`` (``WARBLER_USE_HAPROXY=false`` runs the suite on Serve's Python proxy instead).
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from actors import shutdown_hosts, start_hosts
from serve.ingress import free_port, ingress_env
from storage import Database
from warbler.config import Settings

NUM_HOSTS = 2


def pytest_configure(config: pytest.Config) -> None:
    # A short directory: haproxy's unix sockets live below it (path length limit).
    probe = Settings(data_dir=Path(tempfile.mkdtemp(prefix="wsv-")))
    for name, value in ingress_env(probe).items():
        os.environ.setdefault(name, value)


@dataclass(frozen=True)
class GatewayInfo:
    """Where the session's gateway listens."""

    url: str  # HTTP base URL, route prefix included (no trailing slash)
    ws_url: str  # the WebSocket endpoint
    app_name: str
    settings: Settings


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


@pytest.fixture
async def http(gateway: GatewayInfo) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the gateway."""
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30.0) as client:
        yield client
