"""A local Ray head started for ``warbler up`` and stopped by ``warbler down``.

``ray start --head --block`` runs in its own process group and owns every process of the node
(GCS, raylet, workers); SIGTERM to it shuts the node down. We never run ``ray stop``: it stops
every Ray node on the machine, including other people's.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from serve.ingress import free_port
from storage.redis import process_alive, terminate_process

logger = logging.getLogger(__name__)

# Not 6379: that is Redis's port.
DEFAULT_HEAD_PORT = 6380
_START_TIMEOUT_S = 120.0
_STOP_TIMEOUT_S = 60.0


def port_free(host: str, port: int) -> bool:
    """True if nothing listens on ``host:port``."""
    with socket.socket() as s:
        # As servers bind (uvicorn, Ray): a port whose old connections sit in TIME_WAIT after
        # `warbler down` is free to use again.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def start_head(
    *, env: dict[str, str], resources: dict[str, float], log_path: Path, num_cpus: int | None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a head node; returns the process and the cluster address (host:port)."""
    port = DEFAULT_HEAD_PORT if port_free("127.0.0.1", DEFAULT_HEAD_PORT) else free_port()
    ray_bin = str(Path(sys.executable).with_name("ray"))
    cmd = [
        ray_bin,
        "start",
        "--head",
        "--block",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--resources={json.dumps(resources)}",
    ]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 (our own command line)
            cmd,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}; see {log_path}")
        if not port_free("127.0.0.1", port):
            return proc, address
        time.sleep(0.2)
    stop_head(proc.pid)
    raise RuntimeError(f"the Ray head did not open port {port}; see {log_path}")


def stop_head(pid: int) -> None:
    """SIGTERM the head (it drains and stops every process of its node); SIGKILL its process
    group if it lingers. Only the head gets SIGTERM: signalling the whole group at once makes
    its children die under it and the head wait out its drain timeout."""
    if not process_alive(pid):
        return
    terminate_process(pid, _STOP_TIMEOUT_S, what="the Ray head", group=True)


def pids_with_arg(fragment: str) -> list[int]:
    """PIDs whose command line contains ``fragment`` (to find haproxy processes by the config
    path under our own data dir: nothing else can have it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fragment in cmdline:
            found.append(int(entry.name))
    return found
