"""EmbeddedRedis: a real redis-server on a unix socket, reused by a second process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from storage import EmbeddedRedis, resolve_redis_url
from storage.redis import process_alive
from warbler.config import Settings
from warbler.errors import WarblerError

_CHILD = """
import json, sys
from pathlib import Path
from storage import EmbeddedRedis
server = EmbeddedRedis(Path(sys.argv[1]))
url = server.start()
print(json.dumps({"url": url, "started": server.started, "pid": server.pid()}))
server.stop()  # a no-op unless this process started it
"""


@pytest.fixture
def redis_dir() -> Iterator[Path]:
    # A short path: unix socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="wr-") as d:
        yield Path(d)


def _child_start(redis_dir: Path) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(redis_dir)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _ping(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _terminate(pid: object) -> None:
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_start_and_stop(redis_dir: Path) -> None:
    server = EmbeddedRedis(redis_dir)
    url = server.start()
    try:
        assert url == f"unix://{redis_dir.resolve()}/redis.sock"
        assert server.started
        pid = server.pid()
        assert pid is not None and process_alive(pid)
        assert _ping(url)
    finally:
        server.stop()
    assert not _ping(url)
    assert not process_alive(pid)
    assert not (redis_dir / "redis.sock").exists()


def test_second_process_reuses_the_live_server(redis_dir: Path) -> None:
    server = EmbeddedRedis(redis_dir)
    url = server.start()
    try:
        client = redis.Redis.from_url(url)
        client.set("shared", b"from parent")
        child = _child_start(redis_dir)
        assert child == {"url": url, "started": False, "pid": server.pid()}
        # The child's stop() left the server alone.
        assert client.get("shared") == b"from parent"
        client.close()
    finally:
        server.stop()


def test_racing_processes_end_up_with_one_server(redis_dir: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD.replace("server.stop()", ""), str(redis_dir)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1]) for p in procs]
    pid = results[0]["pid"]
    try:
        assert {r["pid"] for r in results} == {pid}
        assert sum(r["started"] for r in results) == 1
    finally:
        _terminate(pid)


def test_stale_pidfile_starts_a_new_server(redis_dir: Path) -> None:
    first = EmbeddedRedis(redis_dir)
    first.start()
    old_pid = first.pid()
    assert old_pid is not None
    # Kill the server behind the object's back: the pidfile and socket stay as stale leftovers.
    os.kill(old_pid, signal.SIGKILL)
    while process_alive(old_pid):
        time.sleep(0.01)
    second = EmbeddedRedis(redis_dir)
    url = second.start()
    try:
        assert second.started and second.pid() not in (None, old_pid)
        assert _ping(url)
    finally:
        second.stop()
        first.started = False


def test_stop_of_a_reusing_object_leaves_the_server(redis_dir: Path) -> None:
    owner = EmbeddedRedis(redis_dir)
    url = owner.start()
    try:
        guest = EmbeddedRedis(redis_dir)
        assert guest.start() == url and not guest.started
        guest.stop()
        assert _ping(url)
    finally:
        owner.stop()


def test_socket_path_too_long_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WarblerError):
        EmbeddedRedis(tmp_path / ("d" * 120)).start()


def test_resolve_redis_url(redis_dir: Path) -> None:
    given = Settings(redis_url="redis://127.0.0.1:6379/3", data_dir=redis_dir)
    assert resolve_redis_url(given) == ("redis://127.0.0.1:6379/3", None)
    url, embedded = resolve_redis_url(Settings(data_dir=redis_dir, redis_url=None))
    try:
        assert embedded is not None and url == embedded.url
        assert url.startswith("unix://") and _ping(url)
    finally:
        assert embedded is not None
        embedded.stop()
