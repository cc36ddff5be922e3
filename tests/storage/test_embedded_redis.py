"""EmbeddedRedis: a real redis-server on a unix socket, reused by a second process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from storage import EmbeddedRedis, connect_redis, resolve_redis_url
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
    first.start(supervise=False)  # a leftover of a process that is gone
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


def _wait(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


async def test_a_killed_server_is_restarted_on_the_same_socket(redis_dir: Path) -> None:
    server = EmbeddedRedis(redis_dir)
    restarted: list[int] = []
    server.on_restart = restarted.append
    url = server.start()
    client = connect_redis(url)  # a process that reuses the server: it only reconnects
    try:
        await client.set("kept", b"before the kill")
        old_pid = server.pid()
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        _wait(lambda: server.restarts == 1, "the supervisor restarts the server")
        new_pid = server.pid()
        assert new_pid is not None and new_pid != old_pid and process_alive(new_pid)
        assert restarted == [new_pid]
        assert server.url == url and _ping(url)
        # The same client, on the same URL, after one failed command at most.
        with contextlib.suppress(redis.RedisError):
            await client.ping()
        # The append-only file kept what was written before the kill.
        assert await client.get("kept") == b"before the kill"
    finally:
        await client.aclose()
        server.stop()
    assert not process_alive(new_pid)


def test_stop_ends_the_supervision(redis_dir: Path) -> None:
    server = EmbeddedRedis(redis_dir)
    url = server.start()
    pid = server.pid()
    server.stop()
    assert pid is not None and not process_alive(pid)
    time.sleep(0.6)  # three supervisor periods: nothing respawns it
    assert not _ping(url) and server.restarts == 0


def test_a_reusing_object_does_not_supervise(redis_dir: Path) -> None:
    owner = EmbeddedRedis(redis_dir)
    owner.start(supervise=False)
    guest = EmbeddedRedis(redis_dir)
    try:
        guest.start()
        pid = owner.pid()
        assert pid is not None and not guest.started
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.6)
        assert guest.restarts == 0 and owner.pid() == pid and not process_alive(pid)
    finally:
        guest.stop()
        owner.started = False


def test_a_detached_supervisor_outlives_its_starter(redis_dir: Path) -> None:
    # `warbler up --detach` leaves: a process of its own keeps the server supervised, and a
    # later `warbler down` (another object, another process) stops both.
    server = EmbeddedRedis(redis_dir)
    url = server.start()
    supervisor = server.supervise_detached()
    try:
        assert process_alive(supervisor)
        time.sleep(0.5)  # the child is up and looking
        first = server.pid()
        assert first is not None
        os.kill(first, signal.SIGKILL)
        _wait(lambda: server.pid() not in (None, first) and _ping(url), "respawned detached")
        assert server.first_pid() == first  # the owner's record survives the respawn
        later = EmbeddedRedis(redis_dir)
        later.started = True  # as `warbler down` does, from the state file
        later.stop()
        assert not process_alive(supervisor)
        assert not _ping(url)
    finally:
        server.started = False
        with contextlib.suppress(ProcessLookupError):
            os.kill(supervisor, signal.SIGKILL)
