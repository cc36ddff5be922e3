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
import sys
import threading
import time
from collections.abc import Iterator
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
    ray_session_dir: str | None = None  # the started head's logs under /tmp/ray (kept on disk)
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


def _say(text: str, *, err: bool = False) -> None:
    """Print a line even when the reader is gone: `warbler up | tee up.log` loses its pipe when
    Ctrl-C kills tee too, and a failed print must not abort the shutdown that follows."""
    try:
        typer.echo(text, err=err)
    except OSError:  # EPIPE, or EIO from a closed terminal
        stream = sys.stderr if err else sys.stdout
        with contextlib.suppress(OSError, ValueError):
            # Point the descriptor at /dev/null: later writes (ours, Ray's, the interpreter's
            # flush at exit) then succeed silently instead of raising again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _shielded() -> Iterator[None]:
    """Run a shutdown to its end: a second Ctrl-C (or SIGTERM, or the terminal closing) while
    it runs is acknowledged, not obeyed, since stopping half way leaves processes behind."""

    def again(*_: object) -> None:
        _say("still stopping; wait for it to finish", err=True)

    previous = {sig: signal.signal(sig, again) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
    # A closed stdout must raise EPIPE (handled by _say), not kill us silently mid-shutdown.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = _settings(port, ray_address)
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    previous = UpState.load(data_dir)
    if previous is not None and previous.running():
        typer.echo(f"Warbler already runs from {data_dir} ({previous.http_url}); `warbler down`.")
        raise typer.Exit(1)
    if not port_free(settings.http_host, settings.http_port):
        _say(f"port {settings.http_port} on {settings.http_host} is taken; use --port.")
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
                _say(
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
        state.ray_session_dir = _deploy(settings, address)
        state.save()
        _wait_ready(http_url)
        if monitoring:
            _start_monitoring(state)
    except BaseException:
        with _shielded():
            _say("warbler up failed; stopping what it started", err=True)
            if embedded is not None:
                embedded.stop_supervising()
            current = UpState.load(data_dir)
            if current is not None:
                _stop(current)
            elif embedded is not None:
                embedded.stop()
        raise
    _print_urls(http_url, address, data_dir, detach, settings)
    if detach:
        import ray

        if embedded is not None and embedded.started:
            embedded.supervise_detached()  # this process leaves; the Redis stays supervised
        ray.shutdown()  # disconnect this driver; the cluster keeps running
        return
    _wait_for_interrupt(head_pid)
    with _shielded():
        _say("stopping…")
        if embedded is not None:
            embedded.stop_supervising()
        _stop(state)
        _say_leftovers(state)


def _deploy(settings: Settings, address: str) -> str | None:
    """Start the hosts and the app on the cluster at ``address``; returns the cluster's
    session directory (its logs) when Ray tells us."""
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
    node = ray._private.worker._global_node  # no public API names a driver's session dir
    return str(node.get_session_dir_path()) if node is not None else None


def _start_monitoring(state: UpState) -> None:
    from warbler import prometheus

    proc = prometheus.start(Path(state.data_dir))
    if proc is None:
        _say("  (no `prometheus` binary: apt install prometheus; see docs/operations.md)")
        return
    state.prometheus_pid = proc.pid
    state.save()
    url = f"http://127.0.0.1:{prometheus.DEFAULT_PORT}/"
    _say(f"  Prometheus: {url} (Grafana dashboard: deploy/grafana/)")


def _print_urls(
    http_url: str, address: str, data_dir: Path, detach: bool, settings: Settings
) -> None:
    _say("")
    _say("Warbler is up.")
    _say(f"  web chat:   {http_url}/")
    _say(f"  API docs:   {http_url}/docs")
    _say(f"  health:     {http_url}/healthz   {http_url}/readyz")
    _say(f"  WebSocket:  {http_url.replace('http', 'ws', 1)}/v1/ws")
    _say(f"  Ray:        {address}")
    _say(f"  data:       {data_dir}")
    if settings.host_autoscale:
        _say(
            f"  hosts:      {settings.num_hosts}, autoscaled {settings.min_hosts}-"
            f"{settings.max_hosts} (WARBLER_HOST_AUTOSCALE=false: fixed)"
        )
    else:
        _say(f"  hosts:      {settings.num_hosts}, fixed")
    _say("Stop it with `warbler down`." if detach else "Press Ctrl-C to stop.")


def _wait_for_interrupt(head_pid: int | None) -> None:
    stop = threading.Event()
    for sig in _STOP_SIGNALS:
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        if head_pid is not None and not process_alive(head_pid):
            _say("the Ray head exited", err=True)
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
    with _shielded():
        _stop(state)
    _say("Warbler is down.")
    _say_leftovers(state)


def _say_leftovers(state: UpState) -> None:
    """What stays on disk after a stop, so a user knows what to delete (and what not to)."""
    _say(
        f"Left on disk: {state.data_dir} (the database, secret key and logs: the next "
        "`warbler up` reuses them; delete it to start afresh)"
    )
    if state.ray_session_dir and os.path.isdir(state.ray_session_dir):
        _say(f"  and Ray's session logs in {state.ray_session_dir} (safe to delete)")


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
        # first_pid: the supervisor may have respawned it since (same server, new pid).
        if state.redis_pid in (embedded.pid(), embedded.first_pid()):
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


def join_running() -> Settings:
    """Join the cluster `warbler up` runs from this data dir (as a Ray driver in its namespace)
    and return its settings; exit 1 with a message when nothing runs here."""
    settings = Settings()
    state = UpState.load(settings.data_dir.resolve())
    if state is None or not state.running():
        typer.echo(f"Warbler is not running from {settings.data_dir.resolve()}")
        raise typer.Exit(1)
    _ray_auth_env(Path(state.ray_token_path) if state.ray_token_path else None)
    import ray

    ray.init(address=state.ray_address, namespace=state.namespace, log_to_driver=False)
    return settings.model_copy(update={"namespace": state.namespace, "redis_url": state.redis_url})


def autoscaler(
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw status.")] = False,
) -> None:
    """Show the host pool and what its autoscaler decided recently."""
    settings = join_running()

    import ray

    from actors import cluster
    from actors.autoscale import controller_status

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
        typer.echo(
            "controller: not running (WARBLER_HOST_AUTOSCALE and WARBLER_HOST_FAILOVER false?)"
        )
        return
    failover = status.get("failover") or {}
    typer.echo(f"failover: {'on' if failover.get('running') else 'off'}")
    for entry in failover.get("history", []):
        when = time.strftime("%H:%M:%S", time.localtime(entry["t"]))
        typer.echo(f"  {when}  {entry['action']:<8}  {entry['host']}  {entry['took_s']} s")
    if not settings.host_autoscale:
        typer.echo("autoscaler: off (WARBLER_HOST_AUTOSCALE=false)")
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
