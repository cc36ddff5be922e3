"""How Serve's ingress is configured: HAProxy (default) or Serve's Python proxy.

With HAProxy every gateway replica runs its own uvicorn and haproxy routes sockets straight to
it, with no extra hop per frame (docs/architecture.md, "Gateway", has the numbers). Serve reads
these variables when the cluster's processes start, so they must be in the environment of the
process that starts the cluster (``ray start`` or a local ``ray.init``), not just the driver.
"""

from __future__ import annotations

import hashlib
import resource
import socket
import tempfile
from pathlib import Path

from warbler.config import Settings

# Serve puts haproxy's admin and metrics sockets under <dir>/<56-hex node id>/, and haproxy
# binds them first as "<path>.<pid>.tmp": all of it must fit a unix socket path (107 bytes).
_MAX_SOCKET_DIR = 107 - len("/") - 56 - len("/metrics.sock") - len(".4194304.tmp")
# After a scale-in starts, the replica keeps taking traffic this long so haproxy can
# deregister it, then closes its sockets with 1012 (clients reconnect elsewhere).
DRAINING_PERIOD_S = 5
# An old haproxy process after a reload keeps its sockets at most this long.
HARD_STOP_AFTER_S = 120
# haproxy's buffer: a request whose request line and headers do not fit (less its 1 KiB of
# rewrite room) gets haproxy's own HTML 400, and haproxy 2.8 (Serve's bundled binary) uses no
# `errorfile` for that parsing error (haproxy issue #3032, fixed in 3.2). Serve's 16 KiB cut
# off at ~15 KiB; at 32 KiB everything up to ~31 KiB reaches the gateway, whose own limits
# answer problem JSON (414 past WARBLER_MAX_URL_BYTES, 431 past WARBLER_MAX_HEADER_BYTES).
# haproxy holds buffers while data is in flight, so idle sockets do not pay for the size.
HAPROXY_BUFSIZE = 32 * 1024


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def haproxy_maxconn() -> int:
    """Sockets haproxy may hold: Serve's default (4,096) capped a node at 4,096 sockets
    (measured). haproxy sizes its descriptor need at ~2.5 per connection (client, replica, and
    its own margin: maxconn 9,872 asked for 24,716) and refuses to start above the hard limit
    (measured on a 20,000-descriptor machine; 7,900 held 7,900 sockets), so take what fits."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return 100_000
    return max(1024, (hard - 512) * 2 // 5)


def haproxy_dir(settings: Settings) -> Path:
    """Where haproxy's config, state and sockets go: under the data dir when the path is short
    enough for a unix socket, else a directory in /tmp named after the data dir."""
    preferred = (settings.data_dir / "haproxy").resolve()
    if len(str(preferred)) <= _MAX_SOCKET_DIR:
        return preferred
    digest = hashlib.sha1(str(preferred).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"whp-{digest}"


def ingress_env(
    settings: Settings,
    *,
    stats_port: int | None = None,
    metrics_port: int | None = None,
    fallback_port: int | None = None,
) -> dict[str, str]:
    """Environment variables for the process that starts the Ray cluster.

    haproxy's stats and Prometheus ports bind every interface (Serve offers no host for them),
    so they get free, non-default ports unless given.
    """
    env = {
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
        # A call to a host that died fails at once (ActorUnavailableError, which the runtime
        # retries on the failover's map) instead of after Ray's default 1 s wait for the
        # death notice; KubeRay sets the same for RayService clusters.
        "RAY_timeout_ms_task_wait_for_death_info": "0",
    }
    if not settings.use_haproxy:
        return env
    d = haproxy_dir(settings)
    d.mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(d / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(d / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(d),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(d / "server-state"),
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(d / "metrics.sock"),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port or free_port()),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port or free_port()),
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(fallback_port or free_port()),
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(DRAINING_PERIOD_S),
            "RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S": str(HARD_STOP_AFTER_S),
            "RAY_SERVE_HAPROXY_MAXCONN": str(haproxy_maxconn()),
            "RAY_SERVE_HAPROXY_TUNE_BUFSIZE": str(HAPROXY_BUFSIZE),
        }
    )
    return env


def http_options(settings: Settings) -> dict[str, object]:
    """``serve.start`` HTTP options: loopback by default (settings.http_host)."""
    return {"host": settings.http_host, "port": settings.http_port}
