"""Serve's autoscaler scales the gateway by open sockets, through the HAProxy ingress.

A WebSocket is one "ongoing request" for its whole life (serve/app.py). That is only a signal
if the replica counts sockets that HAProxy routes straight to its uvicorn (direct ingress) as
ongoing requests: this test opens more sockets than one replica's target and watches Serve add
a replica, then closes them and watches it remove one. Its own app (1-2 replicas, a target of 4
sockets, short delays) so the session's gateway is untouched.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from gwclient import Socket, connect, make_account
from ray.serve._private.common import ReplicaState

from serve.app import DEPLOYMENT_NAME, build_app
from tests.support import GatewayInfo
from warbler.config import Settings

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SOCKETS = 12  # three replicas' worth at a target of 4; max_replicas caps it at 2
# Bounds, not performance assertions: Serve's metrics push and look-back take tens of seconds.
SCALE_TIMEOUT_S = 150.0


def _running_replicas(app_name: str) -> int:
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return 0
    deployment = app.deployments[DEPLOYMENT_NAME]
    return deployment.replica_states.get(ReplicaState.RUNNING, 0)


async def _wait_replicas(app_name: str, wanted: int) -> float:
    """Seconds until ``wanted`` replicas run (bounded)."""
    started = time.monotonic()
    while time.monotonic() - started < SCALE_TIMEOUT_S:
        if await asyncio.to_thread(_running_replicas, app_name) == wanted:
            return time.monotonic() - started
        await asyncio.sleep(1.0)
    raise AssertionError(f"{app_name}: not {wanted} replicas within {SCALE_TIMEOUT_S}s")


@pytest.fixture
def small_gateway(gateway: GatewayInfo) -> Iterator[GatewayInfo]:
    """A second gateway app on the session's Serve: 1-2 replicas, 4 sockets per replica."""
    from ray import serve

    name = f"gwas-{uuid.uuid4().hex[:8]}"
    settings: Settings = gateway.settings.model_copy(
        update={
            "gateway_min_replicas": 1,
            "gateway_initial_replicas": 1,
            "gateway_max_replicas": 2,
            "target_sockets_per_replica": 4,
            "gateway_upscale_delay_s": 1.0,
            "gateway_downscale_delay_s": 5.0,
        }
    )
    serve.run(build_app(settings), name=name, route_prefix=f"/{name}")
    base = gateway.url.rsplit("/", 1)[0]
    yield GatewayInfo(
        url=f"{base}/{name}",
        ws_url=f"{base.replace('http', 'ws', 1)}/{name}/v1/ws",
        app_name=name,
        settings=settings,
    )
    serve.delete(name)


async def test_sockets_scale_the_gateway_out_and_back_in(small_gateway: GatewayInfo) -> None:
    app = small_gateway.app_name
    assert await asyncio.to_thread(_running_replicas, app) == 1
    async with httpx.AsyncClient(base_url=small_gateway.url, timeout=30.0) as http:
        account = await make_account(http, "gwas")
    sockets: list[Socket] = []
    try:
        for i in range(SOCKETS):
            sock, _ = await connect(small_gateway.ws_url, account, device_id=f"d{i}")
            sockets.append(sock)
        up_s = await _wait_replicas(app, 2)
    finally:
        await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)
    down_s = await _wait_replicas(app, 1)
    print(f"\n{SOCKETS} sockets: 2 replicas after {up_s:.1f}s; closed: 1 after {down_s:.1f}s")  # noqa: T201
