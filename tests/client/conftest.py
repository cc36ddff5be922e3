"""Fixtures for the client tests: a real gateway to talk to.

``WARBLER_TEST_GATEWAY_URL`` points the tests at a gateway that is already running (``warbler
up``). Without it, ``gateway_url`` deploys the real app (``serve.app.build_app``) with its actor
hosts on the session Ray cluster, exactly as the gateway tests do (tests/serve/conftest.py), but
for this directory only: it is torn down after the last client test, so the gateway tests that
run later start their own Serve instance on their own port.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from warbler.config import Settings


def pytest_configure(config: pytest.Config) -> None:
    # The ingress (HAProxy or Serve's proxy) is chosen by variables read when the cluster starts.
    from serve.ingress import ingress_env

    probe = Settings(data_dir=Path(tempfile.mkdtemp(prefix="wcl-")))
    for name, value in ingress_env(probe).items():
        os.environ.setdefault(name, value)


@dataclass(frozen=True)
class ClientGateway:
    """The gateway deployed for the client tests."""

    url: str  # HTTP base URL with the route prefix, no trailing slash
    app_name: str


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


@pytest.fixture(scope="package")
async def client_gateway(ray_cluster: Any, settings: Settings) -> AsyncIterator[ClientGateway]:
    """The real gateway app (two replicas) and actor hosts, for the client tests."""
    if os.environ.get("WARBLER_TEST_GATEWAY_URL"):
        pytest.skip("needs the tests' own deployment, not the external WARBLER_TEST_GATEWAY_URL")
    from ray import serve

    from actors import start_hosts
    from serve.app import build_app
    from serve.ingress import free_port
    from storage import Database

    # The gateway migrates nothing itself: the schema must exist (as `warbler up` ensures).
    database = Database.from_settings(settings)
    await database.migrate()
    await database.close()
    # Finds the session's hosts if another fixture started them; they stay for the session.
    await start_hosts(settings, 2)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    name = f"gwc-{uuid.uuid4().hex[:8]}"
    gw_settings = settings.model_copy(update={"http_port": port, "gateway_initial_replicas": 2})
    serve.run(build_app(gw_settings), name=name, route_prefix=f"/{name}")
    url = f"http://127.0.0.1:{port}/{name}"
    _wait_ready(url)
    yield ClientGateway(url=url, app_name=name)
    serve.delete(name)
    serve.shutdown()  # type: ignore[no-untyped-call]


@pytest.fixture(scope="package")
def gateway_url(request: pytest.FixtureRequest) -> str:
    """The gateway's HTTP base URL, e.g. ``http://127.0.0.1:8000``."""
    url = os.environ.get("WARBLER_TEST_GATEWAY_URL")
    if url:
        return url.rstrip("/")
    gateway: ClientGateway = request.getfixturevalue("client_gateway")
    return gateway.url
