"""The systems under test: the baseline relay (a child process) and a Warbler cluster.

`Target` is what a scenario needs of either: URLs, the server's processes (for CPU and memory),
a token cache, and for Warbler its processes by role (host workers, gateway replicas: what a
fault kills and what the profiler samples).
The relay is started here and stopped by its PID. Warbler is either a running cluster
(``--host``) or one this module starts through ``serve.launcher`` and stops again.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from loadtest.accounts import TokenCache
from loadtest.procstats import pids_titled, ray_node_pids
from serve.ingress import free_port
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import WS_PATH

logger = logging.getLogger(__name__)

HOST_TITLE = "ray::ActorHost"
REPLICA_TITLE = "ray::ServeReplica"


@dataclass
class Target:
    """One system under test, as the scenarios see it."""

    name: str
    base_url: str
    server_pids: Callable[[], list[int]]
    cache: TokenCache | None = None
    # The server's processes by role ("host", "gateway replica"): what a fault kills and
    # what py-spy profiles.
    role_pids: dict[str, Callable[[], list[int]]] = field(default_factory=dict)
    # The data dir of a Warbler cluster `warbler up` started: its state file is how a driver
    # joins the cluster's Ray (the scale scenario's events). None for the relay.
    data_dir: Path | None = None

    @property
    def ws_url(self) -> str:
        """The WebSocket endpoint under the base URL."""
        scheme, rest = self.base_url.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest.rstrip('/')}{WS_PATH}"


def wait_healthy(base_url: str, timeout_s: float, path: str = "/healthz") -> None:
    """Poll ``path`` until it answers 200; WarblerError(UNAVAILABLE) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(base_url.rstrip("/") + path, timeout=2.0)
            if response.status_code == 200:
                return
            last = response.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise WarblerError(ErrorCode.UNAVAILABLE, f"{base_url}{path} not healthy: {last!r}")


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    """SIGTERM one process we started, then SIGKILL it if it lingers (by its PID only)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        logger.warning("pid %s ignored SIGTERM; killing it", proc.pid)
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def relay_target(ws_impl: str = "auto", startup_s: float = 30.0) -> Iterator[Target]:
    """The baseline relay in a child process on a free loopback port, for the block's life."""
    port = free_port()
    cmd = [sys.executable, "-m", "loadtest.baseline_relay", "--port", str(port), "--ws", ws_impl]
    proc = subprocess.Popen(cmd)
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_healthy(base_url, startup_s)
        yield Target(
            name="relay",
            base_url=base_url,
            server_pids=lambda: [proc.pid],
            role_pids={"relay": lambda: [proc.pid]},
        )
    finally:
        stop_process(proc)


def _node_pids(base_url: str) -> Callable[[], list[int]]:
    port = urlsplit(base_url).port or 80

    def pids() -> list[int]:
        return ray_node_pids(port)

    return pids


def _titled(base_url: str, title: str) -> Callable[[], list[int]]:
    node = _node_pids(base_url)

    def pids() -> list[int]:
        return pids_titled(node(), title)

    return pids


def warbler_target_at(base_url: str, cache_path: Path | None) -> Target:
    """A running Warbler cluster at ``base_url`` (its processes are found by its port)."""
    wait_healthy(base_url, 10.0, "/readyz")
    return Target(
        name="warbler",
        base_url=base_url.rstrip("/"),
        server_pids=_node_pids(base_url),
        cache=TokenCache(cache_path) if cache_path is not None else None,
        role_pids={
            "host": _titled(base_url, HOST_TITLE),
            "gateway replica": _titled(base_url, REPLICA_TITLE),
        },
    )


@contextlib.contextmanager
def warbler_cluster(
    data_dir: Path, extra_env: dict[str, str] | None = None, startup_s: float = 600.0
) -> Iterator[Target]:
    """A Warbler cluster started for the benchmark (``warbler up --detach``) and stopped after
    it (``warbler down``, which stops what ``up`` started by the PIDs in its state file).

    The cluster gets its own data dir (bench accounts persist there between runs, so their
    argon2 registration is paid once) and a send rate limit far above what the bench offers,
    so the figures measure the system, not the limiter. ``extra_env`` goes to ``warbler up``
    (and from there to the Ray head): e.g. ``RAY_SERVE_HAPROXY_MAXCONN`` or ``WARBLER_*``.
    """
    if importlib.util.find_spec("serve.launcher") is None:
        raise WarblerError(
            ErrorCode.CONFIG,
            "serve.launcher is not available in this checkout: start a cluster and pass --host",
        )
    port = free_port()
    env = {
        **os.environ,
        "WARBLER_DATA_DIR": str(data_dir),
        "WARBLER_SEND_RATE_PER_S": "1000000",
        "WARBLER_SEND_BURST": "1000000",
        **(extra_env or {}),
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "bench-up.log"
    logger.info("starting Warbler: warbler up --detach (log: %s)", log_path)
    try:
        with open(log_path, "ab") as log:
            subprocess.run(
                [*_warbler_cmd(), "up", "--detach", "--port", str(port)],
                env=env, stdout=log, stderr=subprocess.STDOUT, timeout=startup_s, check=True,
            )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        _down(env)
        raise WarblerError(
            ErrorCode.UNAVAILABLE, f"warbler up failed ({exc}); see {log_path}"
        ) from exc
    try:
        target = warbler_target_at(f"http://127.0.0.1:{port}", data_dir / "bench-accounts.json")
        target.data_dir = data_dir
        redis_pid = _embedded_redis_pid(data_dir)
        if redis_pid is not None:
            node = target.server_pids
            target.server_pids = lambda: [*node(), redis_pid]
        yield target
    finally:
        _down(env)


def _embedded_redis_pid(data_dir: Path) -> int | None:
    # The embedded Redis that `warbler up` started is part of the node under test.
    from serve.launcher import UpState

    state = UpState.load(data_dir)
    return state.redis_pid if state is not None else None


def _down(env: dict[str, str]) -> None:
    done = subprocess.run(
        [*_warbler_cmd(), "down"], env=env, timeout=300, check=False,
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    if done.returncode != 0:
        logger.warning("warbler down exited %s", done.returncode)


def _warbler_cmd() -> list[str]:
    script = Path(sys.executable).with_name("warbler")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from warbler.cli import app; app()"]
