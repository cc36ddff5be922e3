"""`warbler up --monitoring`: a local Prometheus scraping every Ray node's metrics endpoint.

Ray's head writes its endpoints to ``/tmp/ray/prom_metrics_service_discovery.json`` only when
it runs its dashboard, which ``warbler up`` turns off; so this writes the same file_sd list
from ``ray.nodes()`` under the data dir, keeps it fresh while ``up`` runs, and starts the
``prometheus`` binary (Debian/Ubuntu: ``apt install prometheus``) on it. Without the binary it
says how to run one. deploy/prometheus.yml is the same config for a cluster with Ray's file.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

DEFAULT_PORT = 9090
_REFRESH_S = 30.0


def targets() -> list[dict[str, Any]]:
    """The file_sd entries of every live node (needs a connected Ray driver)."""
    import ray

    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return [
        {
            "targets": [f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}"],
            "labels": {"ray_node": str(n["NodeID"])[:12]},
        }
        for n in nodes
        if n.get("Alive") and n.get("MetricsExportPort")
    ]


def write_targets(path: Path) -> None:
    """Write the node list atomically (Prometheus re-reads the file when it changes)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(targets(), indent=2))
    tmp.replace(path)


def config(targets_path: Path) -> dict[str, Any]:
    """The scrape config of deploy/prometheus.yml, reading ``targets_path``."""
    return {
        "global": {"scrape_interval": "10s", "evaluation_interval": "10s"},
        "scrape_configs": [
            {
                "job_name": "ray",
                "file_sd_configs": [{"files": [str(targets_path)], "refresh_interval": "30s"}],
            }
        ],
    }


def start(data_dir: Path, port: int = DEFAULT_PORT) -> subprocess.Popen[bytes] | None:
    """Start Prometheus on 127.0.0.1:``port`` with its data under ``data_dir/prometheus``;
    None (after logging how) when the binary is not installed."""
    binary = shutil.which("prometheus")
    home = data_dir.resolve() / "prometheus"
    home.mkdir(parents=True, exist_ok=True)
    targets_path = home / "targets.json"
    write_targets(targets_path)
    config_path = home / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config(targets_path), sort_keys=False))
    if binary is None:
        logger.warning(
            "no prometheus binary: install it (apt install prometheus) or run "
            "`prometheus --config.file=%s`; the node list is %s",
            config_path,
            targets_path,
        )
        return None
    log = open(home / "prometheus.log", "ab")  # the child keeps it open
    proc = subprocess.Popen(  # noqa: S603 (our own command line)
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    threading.Thread(
        target=_refresh, args=(targets_path, proc), name="prometheus-targets", daemon=True
    ).start()
    return proc


def _refresh(path: Path, proc: subprocess.Popen[bytes]) -> None:
    # Nodes come and go with the autoscaler: keep the list current while we run.
    stop = threading.Event()
    while proc.poll() is None and not stop.wait(_REFRESH_S):
        try:
            write_targets(path)
        except Exception:
            logger.debug("refreshing the Prometheus targets failed", exc_info=True)


__all__ = ["DEFAULT_PORT", "config", "start", "targets", "write_targets"]
