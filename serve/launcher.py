"""`warbler up` and `warbler down`: one command starts a whole cluster on one machine.

``up`` starts (or, with ``--ray-address``, joins) Ray with the HAProxy ingress enabled, the
embedded Redis when no Redis URL is configured, migrates the database, starts the actor hosts
and the gateway app, prints the URLs, and stays in the foreground until Ctrl-C (or, with
``--detach``, leaves everything running). A state file under the data dir records what ``up``
started, so ``down`` stops exactly that, by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from serve.ingress import haproxy_dir, http_options, ingress_env
from serve.raycluster import pids_with_arg, port_free, start_head, stop_head
from storage.redis import process_alive, terminate_process
from warbler.config import Settings

logger = logging.getLogger(__name__)

APP_NAME = "warbler"
STATE_FILE = "up.json"
_READY_TIMEOUT_S = 180.0


@dataclass
class UpState:
    """What ``warbler up`` started (written to ``<data dir>/up.json``)."""

    data_dir: str
    namespace: str
    redis_url: str
    ray_address: str
    http_url: str
    joined: bool  # True: we joined someone's cluster and must not stop it
    ray_head_pid: int | None
    redis_pid: int | None  # the embedded Redis we started, if any
    launcher_pid: int
    haproxy_dir: str | None
    ray_token_path: str | None  # the started cluster's own auth token
    prometheus_pid: int | None = None  # `up --monitoring`

    @staticmethod
    def path(data_dir: Path) -> Path:
        return data_dir / STATE_FILE

    def save(self) -> None:
        self.path(Path(self.data_dir)).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, data_dir: Path) -> UpState | None:
        try:
            return cls(**json.loads(cls.path(data_dir).read_text()))
        except FileNotFoundError:
            return None

    def running(self) -> bool:
        """True while the cluster this state describes still runs."""
        if self.ray_head_pid is not None:
            return process_alive(self.ray_head_pid)
        return process_alive(self.launcher_pid)


def _settings(port: int | None, ray_address: str | None) -> Settings:
    settings = Settings()
    updates: dict[str, Any] = {"data_dir": settings.data_dir.resolve()}
    if port is not None:
        updates["http_port"] = port
    if ray_address is not None:
        updates["ray_address"] = ray_address
    # Ray workers run in other directories: every path must be absolute.
    settings = settings.model_copy(update=updates)
    settings.check_production()
    return settings


def _cluster_token(data_dir: Path) -> Path:
    """This cluster's Ray auth token, kept under the data dir (not the user-wide
    ~/.ray/auth_token, which other clusters on the machine may share or replace)."""
    path = data_dir / "ray_auth_token"
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path


def _ray_auth_env(token_path: Path | None) -> dict[str, str]:
    """Token auth for Ray (default since 2.59), set in this process before Ray is imported
    (Ray reads it once) and returned for the head's environment."""
    env = {"RAY_AUTH_MODE": "token"}
    if token_path is not None:
        env["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    for name, value in env.items():
        os.environ.setdefault(name, value)
    return env


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=5.0).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"the gateway at {url} did not become ready")


def up(
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Leave the cluster running and return.")
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Join this Ray cluster instead of starting one (WARBLER_RAY_ADDRESS)."),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="HTTP port (WARBLER_HTTP_PORT, default 8000).")
    ] = None,
    num_cpus: Annotated[
        int | None, typer.Option(help="CPUs of the local Ray node (default: all).")
    ] = None,
    monitoring: Annotated[
        bool, typer.Option(help="Also start a local Prometheus (if installed) on port 9090.")
    ] = False,
) -> None:
    """Start Warbler: Ray, Redis, the database schema, the actor hosts and the gateway."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = _settings(port, ray_address)
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    previous = UpState.load(data_dir)
    if previous is not None and previous.running():
        typer.echo(f"Warbler already runs from {data_dir} ({previous.http_url}); `warbler down`.")
        raise typer.Exit(1)
    if not port_free(settings.http_host, settings.http_port):
        typer.echo(f"port {settings.http_port} on {settings.http_host} is taken; use --port.")
        raise typer.Exit(1)
    settings.resolved_secret_key()  # generated once, before the replicas read it

    from storage import Database, resolve_redis_url

    redis_url, embedded = resolve_redis_url(settings)
    settings = settings.model_copy(update={"redis_url": redis_url})
    head_pid: int | None = None
    try:

        async def migrate() -> None:
            db = Database.from_settings(settings)
            try:
                await db.migrate()
            finally:
                await db.close()

        asyncio.run(migrate())
        joined = settings.ray_address is not None
        token_path = None if joined else _cluster_token(data_dir)
        _ray_auth_env(token_path)
        if joined:
            address = str(settings.ray_address)
            if settings.use_haproxy and os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") != "1":
                typer.echo(
                    "note: joining an existing cluster; Serve uses HAProxy only if that "
                    "cluster was started with RAY_SERVE_ENABLE_HA_PROXY=1."
                )
        else:
            proc, address = start_head(
                env={**ingress_env(settings), **_ray_auth_env(token_path)},
                resources={"warbler_host": float(settings.max_hosts)},
                log_path=data_dir / "logs" / "ray-head.log",
                num_cpus=num_cpus,
            )
            head_pid = proc.pid
        http_url = f"http://{settings.http_host}:{settings.http_port}"
        state = UpState(
            data_dir=str(data_dir),
            namespace=settings.namespace,
            redis_url=redis_url,
            ray_address=address,
            http_url=http_url,
            joined=joined,
            ray_head_pid=head_pid,
            redis_pid=embedded.pid() if embedded is not None and embedded.started else None,
            launcher_pid=os.getpid(),
            haproxy_dir=str(haproxy_dir(settings)) if settings.use_haproxy else None,
            ray_token_path=str(token_path) if token_path else None,
        )
        state.save()
        _deploy(settings, address)
        _wait_ready(http_url)
        if monitoring:
            _start_monitoring(state)
    except BaseException:
        typer.echo("warbler up failed; stopping what it started", err=True)
        current = UpState.load(data_dir)
        if current is not None:
            _stop(current)
        elif embedded is not None:
            embedded.stop()
        raise
    _print_urls(http_url, address, data_dir, detach, settings)
    if detach:
        import ray

        ray.shutdown()  # disconnect this driver; the cluster keeps running
        return
    _wait_for_interrupt(head_pid)
    typer.echo("stopping…")
    _stop(state)


def _deploy(settings: Settings, address: str) -> None:
    import ray
    from ray import serve

    from actors import start_hosts
    from actors.autoscale import ensure_controller
    from serve.app import build_app

    ray.init(address=address, namespace=settings.namespace, log_to_driver=False)
    asyncio.run(start_hosts(settings))
    ensure_controller(settings)
    serve.start(http_options=http_options(settings))
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=False)


def _start_monitoring(state: UpState) -> None:
    from warbler import prometheus

    proc = prometheus.start(Path(state.data_dir))
    if proc is None:
        typer.echo("  (no `prometheus` binary: apt install prometheus; see docs/operations.md)")
        return
    state.prometheus_pid = proc.pid
    state.save()
    url = f"http://127.0.0.1:{prometheus.DEFAULT_PORT}/"
    typer.echo(f"  Prometheus: {url} (Grafana dashboard: deploy/grafana/)")


def _print_urls(
    http_url: str, address: str, data_dir: Path, detach: bool, settings: Settings
) -> None:
    typer.echo("")
    typer.echo("Warbler is up.")
    typer.echo(f"  web chat:   {http_url}/")
    typer.echo(f"  API docs:   {http_url}/docs")
    typer.echo(f"  health:     {http_url}/healthz   {http_url}/readyz")
    typer.echo(f"  WebSocket:  {http_url.replace('http', 'ws', 1)}/v1/ws")
    typer.echo(f"  Ray:        {address}")
    typer.echo(f"  data:       {data_dir}")
    if settings.host_autoscale:
        typer.echo(f"  hosts:      {settings.num_hosts}, autoscaled {settings.min_hosts}-"
                   f"{settings.max_hosts} (WARBLER_HOST_AUTOSCALE=false: fixed)")
    else:
        typer.echo(f"  hosts:      {settings.num_hosts}, fixed")
    typer.echo("Stop it with `warbler down`." if detach else "Press Ctrl-C to stop.")


def _wait_for_interrupt(head_pid: int | None) -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        if head_pid is not None and not process_alive(head_pid):
            typer.echo("the Ray head exited", err=True)
            return


def down() -> None:
    """Stop what `warbler up` started (by the PIDs in its state file)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings()
    state = UpState.load(settings.data_dir.resolve())
    if state is None:
        typer.echo(f"nothing to stop: no {STATE_FILE} under {settings.data_dir.resolve()}")
        raise typer.Exit(0)
    _ray_auth_env(Path(state.ray_token_path) if state.ray_token_path else None)
    _stop(state)
    typer.echo("Warbler is down.")


def _stop(state: UpState) -> None:
    """Undo ``up``: the app and the hosts (gracefully, so entities checkpoint), then the Ray
    head, haproxy leftovers and the embedded Redis, each only if we started it."""
    settings = Settings(
        data_dir=Path(state.data_dir), namespace=state.namespace, redis_url=state.redis_url
    )
    if state.ray_head_pid is None or process_alive(state.ray_head_pid):
        with contextlib.suppress(Exception):
            _undeploy(settings, state)
    if state.ray_head_pid is not None:
        stop_head(state.ray_head_pid)
    if state.haproxy_dir and not state.joined:
        for pid in pids_with_arg(state.haproxy_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    if state.prometheus_pid is not None and process_alive(state.prometheus_pid):
        terminate_process(state.prometheus_pid, 10.0, what="prometheus")
    if state.redis_pid is not None:
        from storage import EmbeddedRedis

        embedded = EmbeddedRedis(Path(state.data_dir) / "redis")
        if embedded.pid() == state.redis_pid:
            embedded.started = True  # we did start it: the state file says so
            embedded.stop()
    UpState.path(Path(state.data_dir)).unlink(missing_ok=True)


def _undeploy(settings: Settings, state: UpState) -> None:
    import ray
    from ray import serve

    from actors import shutdown_hosts

    if not ray.is_initialized():
        ray.init(address=state.ray_address, namespace=state.namespace, log_to_driver=False)
    try:
        if state.joined:
            serve.delete(APP_NAME)
        else:
            serve.shutdown()  # type: ignore[no-untyped-call]  # untyped in Ray 2.60
        asyncio.run(shutdown_hosts(settings))
    finally:
        ray.shutdown()


def autoscaler(
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw status.")] = False,
) -> None:
    """Show the host pool and what its autoscaler decided recently."""
    settings = Settings()
    state = UpState.load(settings.data_dir.resolve())
    if state is None or not state.running():
        typer.echo(f"Warbler is not running from {settings.data_dir.resolve()}")
        raise typer.Exit(1)
    _ray_auth_env(Path(state.ray_token_path) if state.ray_token_path else None)
    settings = settings.model_copy(
        update={"namespace": state.namespace, "redis_url": state.redis_url}
    )

    import ray

    from actors import cluster
    from actors.autoscale import controller_status

    ray.init(address=state.ray_address, namespace=state.namespace, log_to_driver=False)
    try:
        status = controller_status(settings)
        shard_map = asyncio.run(cluster.current_map(settings))
    finally:
        ray.shutdown()
    hosts = list(shard_map.hosts) if shard_map else []
    if as_json:
        typer.echo(json.dumps({"hosts": hosts, "autoscaler": status}))
        return
    typer.echo(f"hosts: {', '.join(hosts) or 'none'}")
    if status is None:
        typer.echo("autoscaler: not running (WARBLER_HOST_AUTOSCALE=false?)")
        return
    policy = status["policy"]
    typer.echo(
        f"autoscaler: {'running' if status['running'] else 'STOPPED'}, "
        f"{policy['min_hosts']}-{policy['max_hosts']} hosts, {status['steps']} steps"
    )
    for entry in status["history"]:
        when = time.strftime("%H:%M:%S", time.localtime(entry["t"]))
        change = " ".join(f"+{h}" for h in entry["added"]) + " ".join(
            f"-{h}" for h in entry["removed"]
        )
        error = f"  error: {entry['error']}" if entry["error"] else ""
        typer.echo(f"  {when}  {entry['action']:<4}  {change:<12}  {entry['reason']}{error}")


def register(app: typer.Typer) -> None:
    """Add `up`, `down` and `autoscaler` to the `warbler` command."""
    app.command("up")(up)
    app.command("down")(down)
    app.command("autoscaler")(autoscaler)
