"""A change of the gateway replica set behind HAProxy, for real: the sockets that predate it are
told to reconnect (a `reconnect` frame), one by one over the reload window, instead of being
dropped together when the old haproxy process hard-stops; a draining replica spreads its own
sockets too. Real Serve, real haproxy, real SDK clients chatting across both changes: every
message arrives exactly once, in order.

The test deploys its own gateway app (one replica, a 4-second window), scales it out to two
replicas in place, then back in to one, and prints the reconnect timeline of each phase.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from client import ConnectionEvent, WarblerClient
from client.connection import RECONNECT_REQUESTED
from serve.ingress import DRAINING_PERIOD_S
from serve.reload import DRAIN_HOLD_S, DRAIN_MARGIN_S, RELOAD_SETTLE_S
from storage import Keys, PresenceCache
from tests.support import GatewayInfo
from warbler.config import Settings
from warbler.protocol import MessageFrame

pytestmark = [pytest.mark.ray, pytest.mark.slow]

PASSWORD = "correct horse battery"
PAIRS = 12  # 24 clients, one direct conversation per pair
WINDOW_S = 4.0
SEND_EVERY_S = 0.5
# Code version of the test's deployment: Serve's Python API gives each serve.run a new random
# one (ray/serve/_private/client.py, `deployment._version or get_random_string()`), which would
# make a change of replica bounds a rolling redeploy of every replica. Pinned, the change is an
# in-place update of the autoscaling config, as a `serve deploy` of a config file does.
CODE_VERSION = "reload-reconnect-test"


def _app(bound: Settings, replicas: int) -> Any:
    from ray import serve

    from serve.app import Gateway, deployment_options

    sized = bound.model_copy(
        update={
            "gateway_min_replicas": replicas,
            "gateway_initial_replicas": replicas,
            "gateway_max_replicas": replicas,
        }
    )
    deployment = serve.deployment(**deployment_options(sized))(serve.ingress()(Gateway))
    # Same init args (``bound``) every time: only the autoscaling config changes.
    return deployment.options(version=CODE_VERSION, _internal=True).bind(bound)


def _replicas(app_name: str) -> list[str]:
    import ray

    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and a["name"].startswith(f"SERVE_REPLICA::{app_name}#")
    )


def _haproxy_starts() -> dict[int, float]:
    """pid -> start time (wall clock) of this session's haproxy processes."""
    import psutil

    # psutil counts from the boot time in whole seconds; /proc/uptime gives the fraction.
    with open("/proc/uptime") as f:
        boot = time.time() - float(f.read().split()[0])
    offset = boot - psutil.boot_time()

    # Serve writes the config below the directory of RAY_SERVE_HAPROXY_CONFIG_FILE_LOC.
    config_dir = os.path.dirname(os.environ.get("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", ""))
    starts = {}
    for proc in psutil.process_iter(["pid", "name", "cmdline", "create_time"]):
        cmdline = proc.info.get("cmdline") or []
        if (
            config_dir
            and "haproxy" in (proc.info.get("name") or "")
            and any(arg.startswith(config_dir) for arg in cmdline)
        ):
            starts[int(proc.info["pid"])] = float(proc.info["create_time"]) + offset
    return starts


def _reloads(seen: dict[int, float], since: float) -> list[tuple[float, str]]:
    return [(t, f"haproxy reload (pid {pid} started)") for pid, t in seen.items() if t >= since]


@dataclass
class Peer:
    """One client: what it sent (acked), what it received, and how its sockets ended."""

    client: WarblerClient
    conv: int = 0
    sent: list[tuple[int, str]] = field(default_factory=list)  # (seq, body) acked
    received: list[tuple[int, str]] = field(default_factory=list)  # every message, in order
    ends: list[tuple[float, str]] = field(default_factory=list)  # (wall time, reason)
    opens: list[float] = field(default_factory=list)

    async def consume(self) -> None:
        async for event in self.client.events():
            if isinstance(event, MessageFrame):
                self.received.append((event.seq, str(event.body)))
            elif isinstance(event, ConnectionEvent):
                if event.state == "disconnected":
                    self.ends.append((time.time(), event.reason))
                elif event.state == "connected" and event.resumed:
                    self.opens.append(time.time())

    async def chat(self, stop: asyncio.Event, tag: str) -> None:
        i = 0
        while not stop.is_set():
            body = f"{tag}-{i}"
            sent = await self.client.send(body, conversation_id=self.conv, timeout_s=120)
            self.sent.append((sent.seq, body))
            i += 1
            await asyncio.sleep(SEND_EVERY_S)


def _announced_since(peers: list[Peer], since: float) -> list[tuple[float, str]]:
    """(time, why) of every socket end since ``since``: the reason of the `reconnect` frame
    that announced it, or the bare close."""
    out = []
    for p in peers:
        for t, reason in p.ends:
            if t >= since:
                told = re.search(rf"\({RECONNECT_REQUESTED}: (\w+)\)", reason)
                out.append((t, told.group(1) if told else f"unannounced: {reason}"))
    return out


async def _wait(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def _report(phase: str, start: float, peers: list[Peer], extra: list[tuple[float, str]]) -> None:
    lines = [f"--- {phase}: timeline (s after the change was requested)"]
    for t, what in sorted(extra):
        lines.append(f"  {t - start:7.2f}  {what}")
    told = sorted(t - start for t, _ in _announced_since(peers, start))
    if told:
        lines.append(
            f"  {len(told)} sockets told to reconnect between {told[0]:.2f} and {told[-1]:.2f}"
            f" (span {told[-1] - told[0]:.2f}s, window {WINDOW_S:.0f}s):"
        )
        lines.append("    " + " ".join(f"{t:.2f}" for t in told))
    print("\n".join(lines))  # noqa: T201 (the timeline is the point of this test)


def _spread_check(times: list[float], window_s: float) -> None:
    """Reconnects spread over the window: not bunched into a small part of it."""
    assert times
    span = max(times) - min(times)
    assert span >= window_s / 2, f"reconnects bunched into {span:.2f}s of a {window_s}s window"
    buckets: dict[int, int] = {}
    for t in times:
        key = int((t - min(times)) // (window_s / 8))
        buckets[key] = buckets.get(key, 0) + 1
    assert max(buckets.values()) <= max(3, len(times) // 3), buckets


async def _placement(redis: aioredis.Redis, namespace: str, peers: list[Peer]) -> dict[str, int]:
    presence = PresenceCache(redis, Keys(namespace))
    counts: dict[str, int] = {}
    for p in peers:
        for device, replica in (await presence.devices(p.client.user_id)).items():
            if device == p.client.device_id:
                counts[replica] = counts.get(replica, 0) + 1
    return counts


async def test_replica_changes_reconnect_old_sockets_in_turn(
    gateway: GatewayInfo, redis: aioredis.Redis, uid: str
) -> None:
    if os.environ.get("WARBLER_TEST_GATEWAY_URL"):
        pytest.skip("deploys and scales its own app on the tests' Serve instance")
    if not gateway.settings.use_haproxy:
        pytest.skip("only haproxy drops older sockets on a reload")
    from ray import serve

    name = f"{gateway.app_name}-rl"
    settings = gateway.settings.model_copy(update={"reload_reconnect_window_s": WINDOW_S})
    await asyncio.to_thread(serve.run, _app(settings, 1), name=name, route_prefix=f"/{name}")
    url = gateway.url.replace(f"/{gateway.app_name}", f"/{name}")
    peers: list[Peer] = []
    tasks: list[asyncio.Task[None]] = []
    events: list[tuple[float, str]] = []
    listener = redis.pubsub()
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            await _wait_ready(http, url)
        first = _replicas(name)
        assert len(first) == 1, first

        # The topology announcements, as every replica sees them (for the timeline).
        await listener.subscribe(Keys(settings.namespace).gateways_channel())

        async def listen() -> None:
            while True:
                msg = await listener.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is not None:
                    events.append((time.time(), f"announced: {msg['data'].decode()}"))

        # Every haproxy process that starts (each is a reload), sampled.
        seen: dict[int, float] = {}

        async def sample() -> None:
            while True:
                seen.update(await asyncio.to_thread(_haproxy_starts))
                await asyncio.sleep(0.5)

        tasks += [asyncio.create_task(listen()), asyncio.create_task(sample())]

        for i in range(PAIRS):
            a, b = Peer(WarblerClient(url)), Peer(WarblerClient(url))
            await a.client.register(f"rl{i}a_{uid}", PASSWORD)
            await b.client.register(f"rl{i}b_{uid}", PASSWORD)
            conv = (await a.client.open_direct(b.client.user_id)).id
            a.conv = b.conv = conv
            for p in (a, b):
                await p.client.connect()
                tasks.append(asyncio.create_task(p.consume()))
            peers += [a, b]
        stop = asyncio.Event()
        for n, p in enumerate(peers):
            tasks.append(asyncio.create_task(p.chat(stop, f"c{n}")))
        await asyncio.sleep(2)
        before = await _placement(redis, settings.namespace, peers)

        # --- Scale out, in place: the old replica stays and its sockets move in turn.
        t_out = time.time()
        await asyncio.to_thread(serve.run, _app(settings, 2), name=name, route_prefix=f"/{name}")
        second = _replicas(name)
        assert len(second) == 2 and first[0] in second, (first, second)
        events.append((time.time(), "serve.run returned: 2 replicas, the first one kept"))
        await _wait(
            lambda: all(_announced_since([p], t_out) for p in peers),
            90,
            "every pre-existing socket to be told to reconnect",
        )
        await _wait(lambda: all(p.client.connected for p in peers), 60, "every client back")
        events += _reloads(seen, t_out - 1)
        scaled_out = _announced_since(peers, t_out)
        _report("scale out 1 -> 2", t_out, peers, events)
        after = await _placement(redis, settings.namespace, peers)
        print(f"sockets per replica: before {before}, after {after}")  # noqa: T201

        assert len(scaled_out) == len(peers), "each pre-existing socket was moved exactly once"
        assert all(r == "rebalance" for _, r in scaled_out), scaled_out
        _spread_check([t for t, _ in scaled_out], WINDOW_S)

        # --- Scale in: the removed replica spreads its own sockets ("draining") before Serve
        # closes them; the other one moves its older sockets ("rebalance").
        await asyncio.sleep(2)
        t_in = time.time()
        events.clear()
        await asyncio.to_thread(serve.run, _app(settings, 1), name=name, route_prefix=f"/{name}")
        await _wait(lambda: len(_replicas(name)) == 1, 90, "the scale-in")
        events.append((time.time(), f"one replica left: {_replicas(name)}"))
        await asyncio.sleep(RELOAD_SETTLE_S["draining"] + WINDOW_S + 2)
        await _wait(lambda: all(p.client.connected for p in peers), 60, "every client back")
        events += _reloads(seen, t_in - 1)
        scaled_in = _announced_since(peers, t_in)
        _report("scale in 2 -> 1", t_in, peers, events)
        reasons: dict[str, int] = {}
        for _, r in scaled_in:
            reasons[r] = reasons.get(r, 0) + 1
        print(f"scale-in socket ends by reason: {reasons}")  # noqa: T201
        assert set(reasons) == {"draining", "rebalance"}, reasons
        # Moved once: the removed replica's sockets reconnect after the other replica's cutoff.
        assert len(scaled_in) == len(peers), reasons
        drained = [t for t, r in scaled_in if r == "draining"]
        assert drained, "the removed replica told its sockets itself"
        print(  # noqa: T201
            f"the removed replica's own {len(drained)} sockets: told between "
            f"{min(drained) - t_in:.2f} and {max(drained) - t_in:.2f}s"
        )
        assert len(drained) < len(peers), "the remaining replica moved its older sockets"
        _spread_check(drained, DRAINING_PERIOD_S - DRAIN_MARGIN_S - DRAIN_HOLD_S)

        # --- Every message sent across both changes arrived exactly once, in order.
        stop.set()
        await asyncio.gather(*tasks[-len(peers) :])
        for i, p in enumerate(peers):
            expected = sorted(p.sent + peers[i ^ 1].sent)
            await _wait(_has(p, len(expected)), 60, "delivery")
            assert p.received == expected, (len(p.received), len(expected))
        total = sum(len(p.sent) for p in peers)
        lost = sum(len(set(p.sent) - set(peers[i ^ 1].received)) for i, p in enumerate(peers))
        dups = sum(len(p.received) - len(set(p.received)) for p in peers)
        print(  # noqa: T201
            f"{len(peers)} clients, {total} messages sent across the changes: "
            f"{lost} lost, {dups} duplicated"
        )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await listener.aclose()  # type: ignore[no-untyped-call]
        for p in peers:
            await p.client.close()
        await asyncio.to_thread(serve.delete, name)


def _has(peer: Peer, n: int) -> Any:
    return lambda: len(peer.received) >= n


async def _wait_ready(http: httpx.AsyncClient, url: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            if (await http.get(f"{url}/readyz")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} not ready"
        await asyncio.sleep(0.5)
