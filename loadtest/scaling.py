"""Scaling a running Warbler cluster from the bench: a Ray driver that adds and removes hosts
and gateway replicas, and polls what the cluster runs.

The driver joins the cluster that ``warbler up`` started from a data dir (its state file names
the Ray address, namespace and auth token). The cluster's own `Settings` are read back from the
gateway deployment (its constructor argument), so new hosts and replicas get exactly what the
running ones got.

Hosts change through ``actors.cluster`` (``add_host`` / ``remove_host``: a shard move each).
Gateway replicas change by redeploying the app with the same code version and only the
deployment's ``autoscaling_config`` changed (min = initial = max = the wanted count): Serve
applies that as a lightweight update, so running replicas keep their sockets. Imperative
``serve.run`` gives every deploy a random code version (all replicas restarted), hence the
version is read from the controller and passed on.

Every action runs on one asyncio loop in a background thread, next to a poller that samples
each pool host's ``stats()`` and the number of running replicas a few times a second; the bench
thread (which drives the load generator) submits actions and waits for them with bounds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from loadtest.timeline import EventMark, PoolSample
from warbler.config import Settings
from warbler.errors import ErrorCode, WarblerError

if TYPE_CHECKING:
    from actors.directory import ShardMap

logger = logging.getLogger(__name__)

APP_NAME = "warbler"  # serve.launcher.APP_NAME
DEPLOYMENT_NAME = "Gateway"  # serve.app.DEPLOYMENT_NAME
T = TypeVar("T")


@dataclass
class EventRecord:
    """One scaling event as it ran: its mark on the timeline and what it changed."""

    mark: EventMark
    kind: str  # "add host", "remove host", "add replica", "remove replica"
    host: str | None = None
    before: ShardMap | None = None
    after: ShardMap | None = None
    replicas_ready_ns: int | None = None  # when the poller first saw the wanted replica count
    error: str | None = None


def _connect_ray(data_dir: Path) -> Settings:
    """Join the cluster ``warbler up`` started from ``data_dir``; its Settings."""
    from serve.launcher import UpState

    state = UpState.load(data_dir)
    if state is None or not state.running():
        raise WarblerError(
            ErrorCode.UNAVAILABLE,
            f"no running cluster under {data_dir} (scaling needs the data dir of `warbler up`)",
        )
    # Ray reads these once, when it is imported: nothing the bench imports before this
    # point imports Ray (`actors` does, so it is imported lazily).
    os.environ["RAY_AUTH_MODE"] = "token"
    if state.ray_token_path:
        os.environ["RAY_AUTH_TOKEN_PATH"] = state.ray_token_path
    import ray

    if not ray.is_initialized():
        ray.init(address=state.ray_address, namespace=state.namespace, log_to_driver=False)
    info = _deployment_info()
    args = info.replica_config.init_args
    settings = args[0] if isinstance(args, tuple) and args else None
    if not isinstance(settings, Settings):
        raise WarblerError(ErrorCode.INTERNAL, "the gateway deployment has no Settings argument")
    return settings


def _deployment_info() -> Any:
    # No public API returns a deployment's code version; the Serve client does.
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    if client is None:
        raise WarblerError(ErrorCode.UNAVAILABLE, "Serve is not running on this cluster")
    info, _ = client.get_deployment_info(DEPLOYMENT_NAME, APP_NAME)
    return info


def running_replicas() -> int | None:
    """Gateway replicas in the RUNNING state (None when Serve does not answer)."""
    from ray import serve
    from ray.serve._private.common import ReplicaState

    try:
        app = serve.status().applications[APP_NAME]
        states = app.deployments[DEPLOYMENT_NAME].replica_states
    except (KeyError, AttributeError):
        return None
    return int(states.get(ReplicaState.RUNNING, 0))


def _redeploy(settings: Settings, replicas: int | None) -> None:
    """Redeploy the gateway as a lightweight update (see above): with ``replicas``, exactly
    that many (min = initial = max); None: its configured autoscaling."""
    from ray import serve

    from serve.app import Gateway, deployment_options

    version = _deployment_info().version
    options = deployment_options(settings)
    if replicas is not None:
        autoscaling = dict(options["autoscaling_config"])
        autoscaling.update(min_replicas=replicas, initial_replicas=replicas,
                           max_replicas=replicas)
        options["autoscaling_config"] = autoscaling
    deployment = serve.deployment(**options)(serve.ingress()(Gateway))
    # The running code version keeps this a config update (no replica restarted).
    deployment = deployment.options(version=version, _internal=True)
    serve.run(deployment.bind(settings), name=APP_NAME, route_prefix="/", blocking=False)


def restore_gateway(settings: Settings) -> None:
    """Give the gateway back its configured autoscaling."""
    _redeploy(settings, None)


class ClusterControl:
    """The bench's handle on a running cluster: scaling actions and a background poller."""

    def __init__(self, data_dir: Path, poll_s: float = 0.25) -> None:
        self.settings = _connect_ray(data_dir)
        self.poll_s = poll_s
        self.samples: list[PoolSample] = []
        self.events: list[EventRecord] = []
        self._hosts: list[str] = []
        self._replicas: int | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="scale-control",
                                        daemon=True)
        self._poller: concurrent.futures.Future[None] | None = None
        self._stop = threading.Event()

    def __enter__(self) -> ClusterControl:
        self._thread.start()
        self.call(self._refresh_hosts(), 30.0)
        self._poller = asyncio.run_coroutine_threadsafe(self._poll(), self._loop)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._poller is not None:
            try:
                self._poller.result(10.0)
            except (concurrent.futures.TimeoutError, Exception):  # noqa: BLE001
                logger.exception("scale poller did not stop cleanly")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10.0)
        import ray

        ray.shutdown()

    # ---- running things on the control loop ------------------------------------------------

    def submit(self, coro: Awaitable[T]) -> concurrent.futures.Future[T]:
        """Run a coroutine on the control loop; its future."""
        async def run() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(run(), self._loop)

    def call(self, coro: Awaitable[T], timeout_s: float) -> T:
        """Run a coroutine on the control loop and wait for it (bounded)."""
        return self.submit(coro).result(timeout_s)

    # ---- the poller --------------------------------------------------------------------------

    async def _refresh_hosts(self) -> ShardMap:
        from actors.cluster import current_map

        shard_map = await current_map(self.settings)
        if shard_map is None:
            raise WarblerError(ErrorCode.UNAVAILABLE, "the cluster has no shard map")
        self._hosts = list(shard_map.hosts)
        return shard_map

    async def _poll(self) -> None:
        import ray

        from actors.cluster import get_host

        next_map = 0.0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if started >= next_map:
                    await self._refresh_hosts()
                    self._replicas = await asyncio.to_thread(running_replicas)
                    next_map = started + 1.0
                names = list(self._hosts)
                refs = []
                for name in names:
                    try:
                        refs.append(get_host(self.settings, name).stats.remote())
                    except ValueError:  # gone (removed) between the map read and now
                        refs.append(None)
                envelopes: dict[str, int] = {}
                for name, ref in zip(names, refs, strict=True):
                    if ref is None:
                        continue
                    try:
                        stats = await asyncio.wait_for(ref, timeout=2.0)
                    except (TimeoutError, ray.exceptions.RayError):
                        continue
                    envelopes[name] = int(stats.get("envelopes") or 0)
                self.samples.append(PoolSample(time.time_ns(), envelopes, self._replicas))
            except Exception:
                logger.exception("scale poll failed")
            await asyncio.sleep(max(0.0, self.poll_s - (time.monotonic() - started)))

    # ---- scaling actions ---------------------------------------------------------------------

    def start_event(self, kind: str, label: str, **kw: Any) -> concurrent.futures.Future[
        EventRecord
    ]:
        """Start one scaling action now; the future's record is complete when it ends."""
        actions: dict[str, Callable[..., Awaitable[EventRecord]]] = {
            "add host": self._add_host,
            "remove host": self._remove_host,
            "set replicas": self._replicas_to,
        }
        return self.submit(actions[kind](label, **kw))

    async def _add_host(self, label: str) -> EventRecord:
        from actors.cluster import add_host

        before = await self._refresh_hosts()
        start = time.time_ns()
        record = EventRecord(EventMark(label, start, start), "add host", before=before)
        try:
            record.host = await add_host(self.settings, host_resource=1.0)
            label = f"{label} {record.host}"
        except Exception as exc:  # the bench reports it; the run goes on
            logger.exception("add_host failed")
            record.error = repr(exc)
        record.mark = EventMark(label, start, time.time_ns())
        record.after = await self._refresh_hosts()
        self.events.append(record)
        return record

    async def _remove_host(self, label: str, host: str) -> EventRecord:
        from actors.cluster import remove_host

        before = await self._refresh_hosts()
        start = time.time_ns()
        label = f"{label} {host}"
        record = EventRecord(EventMark(label, start, start), "remove host", host=host,
                             before=before)
        try:
            await remove_host(self.settings, host)
        except Exception as exc:
            logger.exception("remove_host failed")
            record.error = repr(exc)
        record.mark = EventMark(label, start, time.time_ns())
        record.after = await self._refresh_hosts()
        self.events.append(record)
        return record

    async def _replicas_to(self, label: str, count: int, wait_s: float = 60.0) -> EventRecord:
        start = time.time_ns()
        kind = "add replica" if (self._replicas or 0) < count else "remove replica"
        record = EventRecord(EventMark(label, start, start), kind)
        try:
            await asyncio.to_thread(_redeploy, self.settings, count)
            record.mark = EventMark(label, start, time.time_ns())
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                running = await asyncio.to_thread(running_replicas)
                if running == count:
                    record.replicas_ready_ns = time.time_ns()
                    break
                await asyncio.sleep(0.2)
        except Exception as exc:
            logger.exception("changing the replica count failed")
            record.error = repr(exc)
            record.mark = EventMark(label, start, time.time_ns())
        self.events.append(record)
        return record

    def replicas(self) -> int | None:
        """Running replicas now."""
        return self.call(asyncio.to_thread(running_replicas), 30.0)

    def host_names(self) -> list[str]:
        """Pool hosts in the committed map now."""
        return list(self.call(self._refresh_hosts(), 30.0).hosts)

