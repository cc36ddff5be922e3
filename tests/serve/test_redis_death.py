"""Redis dies under traffic, for real: kill -9 of the embedded Redis (its supervisor respawns
it on the same socket) and kill -9 then restart of a Redis server (empty when it comes back).

Each test runs its own stack on its own Redis (the session's must not die): one actor host and
one gateway replica in a namespace of their own, on the session's Ray cluster, Serve instance
and SQL database. Real WebSocket devices send and receive through it; the assertions are the
guarantees: every acked message is in the log once under its seq, every online receiver gets
every acked message on the socket it had (no reconnect needed, no seq twice), a device says
hello while Redis is down and afterwards, and /readyz names Redis while it is down and is 200
again once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from gwclient import Account, Device, connect, make_account

from actors import shutdown_hosts, start_hosts
from actors.directory_store import DirectoryStore
from serve.ingress import free_port
from storage import EmbeddedRedis, Keys, connect_redis
from tests.support import GatewayInfo
from warbler.config import Settings

pytestmark = [pytest.mark.slow, pytest.mark.ray]

# Bounds for correctness (not performance): long enough for a loaded 2-core CI machine.
RECOVERY_DEADLINE_S = 60.0


@dataclass
class Stack:
    url: str
    ws_url: str
    settings: Settings


@contextlib.asynccontextmanager
async def _stack(gateway: GatewayInfo, redis_url: str) -> AsyncIterator[Stack]:
    """One host and one gateway replica of their own on ``redis_url``."""
    from ray import serve

    from serve.app import build_app

    name = f"rd-{uuid.uuid4().hex[:8]}"
    settings = gateway.settings.model_copy(
        update={
            "namespace": f"rd{uuid.uuid4().hex[:10]}",
            "redis_url": redis_url,
            "gateway_initial_replicas": 1,
            "gateway_min_replicas": 1,
            "gateway_max_replicas": 1,
        }
    )
    await start_hosts(settings, 1)
    try:
        serve.run(build_app(settings), name=name, route_prefix=f"/{name}")
        base = f"{gateway.url.rsplit('/', 1)[0]}/{name}"
        stack = Stack(base, f"{base.replace('http', 'ws', 1)}/v1/ws", settings)
        await _until_ready(stack.url)
        yield stack
    finally:
        with contextlib.suppress(Exception):
            serve.delete(name)
        with contextlib.suppress(Exception):
            await shutdown_hosts(settings)


async def _readyz(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10.0) as client:
        return await client.get(f"{url}/readyz")


async def _until_ready(url: str) -> float:
    """Seconds until /readyz answers 200."""
    start = time.monotonic()
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if (await _readyz(url)).status_code == 200:
                return time.monotonic() - start
        assert time.monotonic() - start < RECOVERY_DEADLINE_S, "readyz never came back"
        await asyncio.sleep(0.2)


async def _group(http: httpx.AsyncClient, owner: Account, members: list[Account]) -> int:
    r = await http.post(
        "/v1/conversations",
        json={"title": "redis death", "member_ids": [m.user_id for m in members]},
        headers=owner.headers,
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def _run_with_redis_death(
    stack: Stack,
    kill: Callable[[], None],
    revive: Callable[[], Awaitable[None]],
    *,
    stays_down: bool,
) -> None:
    """``stays_down``: Redis is away until ``revive`` brings it back (a supervised embedded
    Redis is back within ~0.1 s, too soon to see it down reliably)."""
    async with httpx.AsyncClient(base_url=stack.url, timeout=30.0) as http:
        owner = await make_account(http, "rd-owner")
        members = [await make_account(http, f"rd-m{i}") for i in range(3)]
        late = await make_account(http, "rd-late")
        conv = await _group(http, owner, [*members, late])
        convs = [conv]
        sender = Device(stack.ws_url, owner, "sender")
        receivers = [Device(stack.ws_url, m, f"dev-{m.user_id}") for m in members]
        await sender.open(convs)
        for d in receivers:
            await d.open(convs)

        acked: list[dict[str, Any]] = []
        stop = asyncio.Event()

        async def traffic() -> None:
            i = 0
            while not stop.is_set():
                acked.append(await sender.send_reliably(f"m{i}", conv, convs))
                i += 1
                await asyncio.sleep(0.02)

        sending = asyncio.get_running_loop().create_task(traffic())
        while len(acked) < 20:
            await asyncio.sleep(0.05)
        kill()
        if stays_down:
            # While Redis is down: /readyz names it (a problem body), and a hello works.
            down = await _readyz(stack.url)
            assert down.status_code == 503, down.text
            assert down.headers["content-type"].startswith("application/problem+json")
            assert "redis" in down.json()["details"]["down"], down.json()
        late_sock, _ = await connect(stack.ws_url, late, cursors={conv: 0})
        acked_while_down = len(acked)
        await revive()
        ready_after_s = await _until_ready(stack.url)
        marker = len(acked)
        while len(acked) < marker + 20:
            await asyncio.sleep(0.05)
        stop.set()
        await sending
        assert sender.reconnects == 0

        # The log holds every acked message once, gapless, under its acked seq.
        r = await http.get(
            f"/v1/conversations/{conv}/messages",
            params={"after_seq": 0, "limit": 1000},
            headers=owner.headers,
        )
        log = r.json()["messages"]
        assert [m["seq"] for m in log] == list(range(1, len(log) + 1))
        sent = [m for m in log if m["kind"] != "system"]  # not the group's creation notice
        by_cmid = {m["client_msg_id"]: m["seq"] for m in sent}
        assert len(by_cmid) == len(sent) == len(acked)
        for ack in acked:
            assert by_cmid[ack["client_msg_id"]] == ack["seq"]
        total = len(log)

        # Every online receiver gets every acked message on the socket it had all along.
        for d in receivers:
            got = await d.sock.wait_messages(conv, total, timeout=RECOVERY_DEADLINE_S)
            assert [m["seq"] for m in got] == list(range(1, total + 1))
            seqs = [m["seq"] for m in d.sock.messages(conv)]
            assert seqs == sorted(set(seqs)), "in order, no seq twice on one socket"
            assert d.reconnects == 0
        got = await late_sock.wait_messages(conv, total, timeout=RECOVERY_DEADLINE_S)
        assert [m["seq"] for m in got] == list(range(1, total + 1))

        # A reconnect after Redis is back resumes from its cursor.
        again = receivers[0]
        await again.sock.close()
        await again.open(convs)
        await sender.send_reliably("after reconnect", conv, convs)
        await again.sock.wait_messages(conv, 1, timeout=RECOVERY_DEADLINE_S)
        assert again.cursor(conv) == total + 1

        for d in [sender, *receivers]:
            await d.close()
        await late_sock.close()
        print(  # noqa: T201 (pytest -s shows the figures)
            f"acked {total} ({total - acked_while_down} after the kill), "
            f"readyz back {ready_after_s:.2f}s after revive"
        )


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # A unix socket path is limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="wrd-") as d:
        yield Path(d)


async def test_embedded_redis_killed(gateway: GatewayInfo, short_dir: Path) -> None:
    embedded = EmbeddedRedis(short_dir / "redis")
    url = embedded.start()
    try:
        async with _stack(gateway, url) as stack:
            killed: list[int] = []

            def kill() -> None:
                pid = embedded.pid()
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

            async def revive() -> None:
                # Nothing to do: the supervisor (this process started the server) respawns it.
                deadline = time.monotonic() + RECOVERY_DEADLINE_S
                while embedded.restarts == 0:
                    assert time.monotonic() < deadline, "the embedded Redis was not restarted"
                    await asyncio.sleep(0.05)

            await _run_with_redis_death(stack, kill, revive, stays_down=False)
            assert embedded.restarts == 1
            assert embedded.pid() not in killed
    finally:
        embedded.stop()


def _redis_server(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 (the system's redis-server)
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _until_pong(url: str) -> None:
    client = connect_redis(url)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                await client.ping()
                return
            except Exception:
                assert time.monotonic() < deadline, "redis-server did not start"
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()


@pytest.mark.skipif(
    subprocess.run(["which", "redis-server"], capture_output=True).returncode != 0,
    reason="no redis-server binary",
)
async def test_server_redis_restarted_empty(gateway: GatewayInfo) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    servers = [_redis_server(port)]
    try:
        await _until_pong(url)
        async with _stack(gateway, url) as stack:

            def kill() -> None:
                servers[-1].send_signal(signal.SIGKILL)
                servers[-1].wait()

            async def revive() -> None:
                await asyncio.sleep(2.0)  # down long enough for every retry to fail a few times
                servers.append(_redis_server(port))
                await _until_pong(url)

            await _run_with_redis_death(stack, kill, revive, stays_down=True)
            # It came back empty: the gateway put the shard map back (restarted hosts and new
            # replicas read it there).
            client = connect_redis(url)
            try:
                current, _ = await DirectoryStore(client, Keys(stack.settings.namespace)).load()
            finally:
                await client.aclose()
            assert current is not None
    finally:
        for server in servers:
            if server.poll() is None:
                server.send_signal(signal.SIGKILL)
                server.wait()
