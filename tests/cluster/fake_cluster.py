"""A multi-node Ray cluster with a real autoscaler on one machine, for tests.

Ray ships a "fake multi-node" node provider (``ray.autoscaler._private.fake_multi_node``): the head
runs the ordinary autoscaler (``monitor.py``), and when it decides to launch a worker node the
provider starts one more raylet (with its agents) on this machine, carrying the node type's
resources. So ``{"warbler_host": 1}`` demand really makes the autoscaler add a node, and an idle
node is really terminated after ``idle_timeout_minutes``.

Why not ``ray.cluster_utils.AutoscalingCluster``: in the 2.60 wheel it reads an example YAML the
wheel does not ship, and its start/shutdown run ``ray stop --force``, which kills every Ray process
on the machine (other engineers' clusters included). This module writes its own config and stops
only what it started:

- A keeper process leads a new session (``setsid``) and runs ``ray start --head --block``; every
  Ray process of this cluster (GCS, raylets, agents, the autoscaler, workers, and the fake worker
  nodes' raylets that the autoscaler spawns) descends from it and keeps its session id, even
  when orphaned. Stopping signals exactly the processes of that session, by PID: on exit of the
  context manager, or when the test process dies (the keeper gets SIGTERM from the kernel).
- The GCS listens on a free port (never 6379, which is Redis), the temp dir is private, and every
  node binds 127.0.0.1.
- Token auth (the default for local clusters since Ray 2.59) uses a token file of its own:
  ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH``, both in ``FakeCluster.env``, which a driver
  joining the cluster needs too. ``~/.ray/auth_token`` (shared by every local cluster) is untouched.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from serve.ingress import free_port

logger = logging.getLogger(__name__)

# The fake provider names its head node type this way; the head must use it.
HEAD_NODE_TYPE = "ray.head.default"
# monitor.log markers: the decision to launch or terminate (logged as it is taken), and the
# event summary (logged at the end of the update that acted).
_EVENT_MARKERS = (":event_summary:", "StandardAutoscaler: Queue", "StandardAutoscaler: Terminating")


@dataclass(frozen=True)
class FakeNodeType:
    """A worker node type the autoscaler may launch: its resources and how many of them."""

    resources: Mapping[str, float]
    min_workers: int = 0
    max_workers: int = 1
    # Each fake node gets its own plasma store; keep it small (the machine is shared).
    object_store_memory: int = 100 * 1024 * 1024


@dataclass
class FakeCluster:
    """A running fake multi-node cluster: how to reach it and where its files are."""

    address: str
    temp_dir: Path
    config_path: Path
    env: dict[str, str] = field(default_factory=dict)
    session_id: int = 0

    def driver_env(self) -> dict[str, str]:
        """The environment of a driver process that joins this cluster (auth + address)."""
        env = dict(os.environ)
        env.update(self.env)
        env["RAY_ADDRESS"] = self.address
        return env

    def monitor_log(self) -> Path:
        """The autoscaler's log (its scaling decisions) in the current session dir."""
        return self.temp_dir / "session_latest" / "logs" / "monitor.log"

    def autoscaler_events(self) -> list[tuple[float, str]]:
        """The autoscaler's scaling decisions and event summaries, as (unix time, message),
        read from its log: "Queue 1 new nodes for launch", "Adding 1 node(s) of type host.",
        "Terminating the node with id ... (idle)", "Removing 1 nodes of type host (idle)."."""
        path = self.monitor_log()
        if not path.exists():
            return []
        events = []
        for line in path.read_text(errors="replace").splitlines():
            for marker in _EVENT_MARKERS:
                _, found, rest = line.partition(marker)
                if found:
                    # Lines start "2026-11-27 05:11:13,165\tINFO ...", in local time.
                    when = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                    message = rest if marker.startswith(":") else marker.split(": ")[1] + rest
                    events.append((when.timestamp(), message.strip()))
                    break
        return events

    def pids(self) -> list[int]:
        """Every live process of this cluster (the session its keeper leads)."""
        return session_pids(self.session_id)


def autoscaling_config(
    node_types: Mapping[str, FakeNodeType],
    *,
    gcs_address: str,
    head_resources: Mapping[str, float],
    idle_timeout_minutes: float,
    upscaling_speed: float = 1.0,
) -> dict[str, Any]:
    """The cluster-launcher config the head's autoscaler runs with the fake provider."""
    max_workers = sum(t.max_workers for t in node_types.values())
    types: dict[str, Any] = {
        HEAD_NODE_TYPE: {"resources": dict(head_resources), "node_config": {}, "max_workers": 0}
    }
    for name, node_type in node_types.items():
        resources = dict(node_type.resources)
        resources.setdefault("object_store_memory", node_type.object_store_memory)
        types[name] = {
            "resources": resources,
            "node_config": {},
            "min_workers": node_type.min_workers,
            "max_workers": node_type.max_workers,
        }
    return {
        "cluster_name": "warbler-fake",
        "max_workers": max_workers,
        "provider": {
            "type": "fake_multinode",
            # Without it the provider joins workers to <node ip>:6379, Redis's port.
            "gcs_address": gcs_address,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": types,
        "head_node_type": HEAD_NODE_TYPE,
        "auth": {},
        "upscaling_speed": upscaling_speed,
        "idle_timeout_minutes": idle_timeout_minutes,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


def _state(pid: int) -> str:
    # /proc/<pid>/stat: "pid (comm) S ..."; comm may hold spaces and parentheses.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def session_pids(session_id: int) -> list[int]:
    """Live (not zombie) processes whose session id is ``session_id`` (Linux /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.getsid(pid) == session_id and _state(pid) != "Z":
                pids.append(pid)
        except OSError:  # exited between listdir and the look
            continue
    return pids


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_gone(members: Callable[[], list[int]], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := members()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _stop_members(members: Callable[[], list[int]], grace_s: float) -> None:
    """SIGTERM ``members()``, then SIGKILL whatever outlives ``grace_s``."""
    _signal_all(members(), signal.SIGTERM)
    left = _wait_gone(members, grace_s)
    if left:
        logger.warning("SIGKILL to %d processes that outlived SIGTERM: %s", len(left), left)
        _signal_all(left, signal.SIGKILL)
        left = _wait_gone(members, grace_s)
    if left:
        logger.error("processes survived SIGKILL: %s", left)


def _keep(cmd: list[str], grace_s: float, temp_dir: Path) -> int:
    """The session keeper: the leader of the cluster's session, run as ``python fake_cluster.py
    --keep -- <ray start --head --block ...>``.

    It runs the head and, on SIGTERM (from ``fake_cluster`` when the test is done, or from the
    kernel when the test process dies: PR_SET_PDEATHSIG), stops the head first (it shuts its
    node down in order), then every other process of its session (the fake worker nodes the
    autoscaler started, which outlive their parent), by PID, and removes the cluster's temp
    dir. It also stops the session when the head exits on its own. Its exit status is the
    head's.
    """
    me = os.getpid()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    head = subprocess.Popen(cmd)
    while not stop.is_set() and head.poll() is None:
        stop.wait(0.5)
    logger.info("keeper %d: stopping the session (head exit status %s)", me, head.poll())
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            logger.warning(
                "`ray start --block` (pid %d) outlived SIGTERM by %ss", head.pid, grace_s
            )

    def members() -> list[int]:
        # The head is our child: reaped by poll(), so its PID is not reused while we look.
        alive_head = [head.pid] if head.poll() is None else []
        return [p for p in session_pids(me) if p != me and p != head.pid] + alive_head

    _stop_members(members, grace_s)
    shutil.rmtree(temp_dir, ignore_errors=True)
    return head.returncode if head.returncode is not None else 1


def _term_when_parent_dies() -> None:
    """In the keeper before exec: SIGTERM it if the process that started it dies (a test run
    killed hard), so the cluster is stopped all the same. Linux prctl(PR_SET_PDEATHSIG)."""
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def stop_session(keeper: subprocess.Popen[bytes], *, grace_s: float = 15.0) -> None:
    """Stop the cluster whose session ``keeper`` leads: ask the keeper (which stops the head,
    then the rest); if it does not finish in time, SIGKILL what is left of the session.

    ``keeper`` is our child and is reaped only at the end, so its PID (the session id) cannot be
    reused by an unrelated process while we look for the session's members.
    """
    session_id = keeper.pid
    if session_id == os.getsid(0):
        raise RuntimeError("refusing to stop the caller's own session")
    logger.info(
        "stopping fake cluster session %d: %d processes", session_id, len(session_pids(session_id))
    )
    _signal_all([session_id], signal.SIGTERM)
    # The keeper needs up to 3 * grace_s (head, SIGTERM round, SIGKILL round).
    deadline = time.monotonic() + 3 * grace_s + 10
    while time.monotonic() < deadline and not _exited_unreaped(keeper.pid):
        time.sleep(0.2)
    _stop_members(lambda: session_pids(session_id), grace_s)
    keeper.wait(timeout=grace_s)


def _exited_unreaped(pid: int) -> bool:
    """True once child ``pid`` has exited; leaves it unreaped (a zombie keeps its PID taken)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # already reaped (poll() saw it exit)
        return True
    return info is not None


def _wait_for_gcs(keeper: subprocess.Popen[bytes], port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if keeper.poll() is not None:
            raise RuntimeError(f"`ray start --head` exited with {keeper.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"the fake cluster's GCS did not listen on port {port} in {timeout_s}s")


@contextmanager
def fake_cluster(
    node_types: Mapping[str, FakeNodeType],
    *,
    head_cpus: int = 1,
    head_resources: Mapping[str, float] | None = None,
    idle_timeout_minutes: float = 0.1,
    autoscaler_interval_s: int = 1,
    start_timeout_s: float = 90.0,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[FakeCluster]:
    """Start a head with the fake-provider autoscaler; yield it; stop all its processes.

    ``node_types`` are the worker node types (e.g. ``{"host": FakeNodeType({"CPU": 1,
    "warbler_host": 1})}``). The head carries ``head_cpus`` CPUs and ``head_resources`` and no
    node type's custom resources, so demand for those can only be met by a new node.
    """
    # Short path: Ray puts unix sockets under it and they are limited to ~107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="wfc-", dir="/tmp"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    token_path = temp_dir / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    config_path = temp_dir / "autoscaling.yaml"
    head_res = {"CPU": float(head_cpus), **dict(head_resources or {})}
    config = autoscaling_config(
        node_types,
        gcs_address=address,
        head_resources=head_res,
        idle_timeout_minutes=idle_timeout_minutes,
    )
    config_path.write_text(yaml.safe_dump(config))

    cluster_env = {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
        # With "cluster mode" off, Ray's node-IP lookup answers 127.0.0.1 instead of this
        # machine's eth0 address: the head binds loopback only, so drivers and the worker
        # raylets the fake provider starts (it passes no IP) must resolve it the same way.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    env = dict(os.environ)
    env.update(cluster_env)
    env.update(
        {
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": str(autoscaler_interval_s),
            "RAY_USAGE_STATS_ENABLED": "0",
            # Nothing to drain in a test cluster: SIGTERM should stop the head at once.
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        }
    )
    # A driver of another cluster may have left these; they would point our head elsewhere.
    env.pop("RAY_ADDRESS", None)
    env.update(extra_env or {})
    cmd = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        # --block: the head lives as long as this process, which the keeper stops.
        "--block",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={head_cpus}",
        f"--resources={json.dumps(dict(head_resources or {}))}",
        "--object-store-memory=100000000",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        # Ray 2.60 starts a dashboard process even with --include-dashboard=false, on 8265 with
        # no retries: give it a free port so it never collides with another cluster's.
        "--include-dashboard=false",
        f"--dashboard-port={free_port()}",
        f"--temp-dir={temp_dir}",
        f"--autoscaling-config={config_path}",
        "--disable-usage-stats",
    ]
    log_path = temp_dir / "ray-start.log"
    keeper_cmd = [sys.executable, __file__, "--keep", str(temp_dir), "--", *cmd]
    with log_path.open("wb") as log:
        # A new session: every process of this cluster shares it, so we can find and stop them.
        keeper = subprocess.Popen(
            keeper_cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_term_when_parent_dies,
        )
    cluster = FakeCluster(
        address=address,
        temp_dir=temp_dir,
        config_path=config_path,
        env=cluster_env,
        session_id=keeper.pid,
    )
    try:
        try:
            _wait_for_gcs(keeper, port, start_timeout_s)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}; its output: {log_path.read_text()[-4000:]}") from exc
        logger.info("fake cluster up at %s (session %d)", address, keeper.pid)
        yield cluster
    finally:
        stop_session(keeper)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[0] != "--keep" or argv[2] != "--":
        sys.stderr.write("usage: fake_cluster.py --keep TEMP_DIR -- <ray start command>\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return _keep(argv[3:], grace_s=15.0, temp_dir=Path(argv[1]))


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
