"""The Serve application: the gateway deployment and its builder.

``build_app(settings)`` returns the bound application; ``serve run serve.app:build_app`` works
too (its arguments become Settings fields, the rest comes from ``WARBLER_*`` variables), and so
does ``import_path: serve.app:app`` in a Serve config or a KubeRay RayService (``app`` is built on
first access from the ``WARBLER_*`` variables, never at import). On that path nothing else has
prepared the cluster, so each replica first migrates the schema and starts (or finds) the actor
hosts and the host autoscaler; all are idempotent and safe when replicas race.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from actors import start_hosts
from actors.autoscale import ensure_controller
from serve import request_ids
from serve.api import create_api
from serve.context import GatewayContext
from storage import Database
from warbler import metrics
from warbler.config import Settings
from warbler.logs import setup_logging

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "Gateway"
# A replica is a CPU-bound event loop; half a CPU lets a 2-core laptop run the default two and
# gives the autoscaler a resource to place by on a real cluster.
REPLICA_CPUS = 0.5
# A scale-in or redeploy drains sockets: allow them time to leave before the replica is killed.
GRACEFUL_SHUTDOWN_TIMEOUT_S = 30.0


class Gateway:
    """One gateway replica: its services, and the ASGI app built on them."""

    def __init__(self, settings: Settings, *deployments: Any) -> None:
        # ``deployments``: handles of the app's other deployments (the ChatAI embedder), bound
        # here only so that they deploy with the gateway; callers find them by name.
        self._settings = settings
        self._ctx: GatewayContext | None = None
        setup_logging(settings, "gateway")
        metrics.configure(settings)

    async def __serve_build_asgi_app__(self) -> FastAPI:
        # Serve calls this once, after __init__, inside the replica's event loop.
        await _prepare_cluster(self._settings)
        self._ctx = await GatewayContext.start(self._settings)
        return create_api(self._ctx)

    def check_health(self) -> None:
        """Serve's periodic health check: the replica's background loops still run."""
        if self._ctx is not None:
            self._ctx.check()

    async def __del__(self) -> None:
        if self._ctx is not None:
            await self._ctx.close()


async def _prepare_cluster(settings: Settings) -> None:
    """Schema at head, the actor hosts and their autoscaler running: a no-op after `warbler up`
    did all three."""
    db = Database.from_settings(settings)
    try:
        await db.migrate()
    finally:
        await db.close()
    await start_hosts(settings)
    ensure_controller(settings)


def deployment_options(settings: Settings) -> dict[str, Any]:
    """Serve options sized for long-lived sockets.

    A WebSocket is one "ongoing request" for its whole life, so ``max_ongoing_requests`` is the
    socket cap of a replica and the autoscaler's target is sockets per replica.
    ``request_timeout_s`` stays unset: it would cut every socket at the timeout.
    """
    return {
        "name": DEPLOYMENT_NAME,
        "max_ongoing_requests": settings.max_sockets_per_replica,
        "autoscaling_config": {
            "min_replicas": settings.gateway_min_replicas,
            "initial_replicas": settings.gateway_initial_replicas,
            "max_replicas": settings.gateway_max_replicas,
            "target_ongoing_requests": settings.target_sockets_per_replica,
            # Sockets are sticky: scaling in drops sockets (they reconnect elsewhere), so
            # scale out quickly and in slowly.
            "upscale_delay_s": settings.gateway_upscale_delay_s,
            "downscale_delay_s": settings.gateway_downscale_delay_s,
        },
        "ray_actor_options": {
            "num_cpus": REPLICA_CPUS,
            # The replica's own HTTP server (HAProxy ingress) runs serve.request_ids'
            # middleware in front of Serve's, so a client's unsafe X-Request-ID is not echoed.
            "runtime_env": {"env_vars": {request_ids.CALLBACK_ENV: request_ids.CALLBACK_PATH}},
        },
        "graceful_shutdown_timeout_s": GRACEFUL_SHUTDOWN_TIMEOUT_S,
        "health_check_period_s": 10.0,
    }


def build_app(args: Settings | dict[str, Any]) -> Application:
    """The gateway application for ``serve.run``: Settings, or a dict of Settings fields."""
    settings = args if isinstance(args, Settings) else Settings(**args)
    settings.check_production()
    deployment = serve.deployment(**deployment_options(settings))(serve.ingress()(Gateway))
    if not settings.chatai_embedder:
        return deployment.bind(settings)
    from serve.embedder import embedder_app

    return deployment.bind(settings, embedder_app(settings))


def __getattr__(name: str) -> Application:
    # `import_path: serve.app:app` (Serve config, RayService): built when Serve asks for it, so
    # importing this module reads no environment.
    if name == "app":
        return build_app({})
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
