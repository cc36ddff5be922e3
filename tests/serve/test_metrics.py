"""Metrics end to end: real traffic through the real gateway, then Ray's real Prometheus
endpoints scraped until each metric shows exactly what was done (Ray reports about every
10 s, so every check polls with a deadline)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import httpx
import pytest
from gwclient import connect, make_account

from tests.support import GatewayInfo
from warbler import metrics
from warbler.config import Settings
from warbler.status import Scrape, metrics_urls, scrape

pytestmark = pytest.mark.ray

DEADLINE_S = 120.0
# A change shows on the endpoint up to one flush (5 s) plus one Ray report (10 s) later: a
# value unchanged for longer than that has settled.
SETTLED_S = float(Settings.model_fields["metrics_flush_s"].default) + 12.0
SENDS = metrics.FRAMES_IN.exported
ACKS = metrics.FRAMES_OUT.exported
ACK_COUNT = f"{metrics.PREFIX}{metrics.ACK_SECONDS.name}_count"
HELLO_COUNT = f"{metrics.PREFIX}{metrics.HELLO_SECONDS.name}_count"
COMMITTED = f"{metrics.PREFIX}{metrics.COMMIT_BATCH.name}_sum"
HOST_ENVELOPES = f"{metrics.PREFIX}{metrics.HOST_BATCH.name}_sum"


async def _scrape() -> Scrape:
    return await asyncio.to_thread(lambda: scrape(metrics_urls()))


async def _until(check: Callable[[Scrape], list[str]], timeout_s: float = DEADLINE_S) -> Scrape:
    """Scrape until ``check`` finds nothing wrong (it returns what is still wrong)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        now = await _scrape()
        wrong = check(now)
        if not wrong:
            return now
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"metrics never matched: {wrong}")
        await asyncio.sleep(1.0)


async def _settled(name: str) -> Scrape:
    """A scrape once ``name`` has not changed for longer than Ray's report interval (earlier
    tests' sockets may still be leaving the gauge)."""
    last = await _scrape()
    stable_since = asyncio.get_running_loop().time()
    deadline = stable_since + DEADLINE_S
    while asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(1.0)
        now = await _scrape()
        if now.total(name) != last.total(name):
            last, stable_since = now, asyncio.get_running_loop().time()
        elif asyncio.get_running_loop().time() - stable_since > SETTLED_S:
            return now
    raise AssertionError(f"{name} never settled")


async def test_traffic_is_counted_exactly(http: httpx.AsyncClient, gateway: GatewayInfo) -> None:
    before = await _settled(metrics.SOCKETS.exported)
    assert not before.errors, before.errors
    sockets0 = before.total(metrics.SOCKETS.exported)

    def delta(name: str, now: Scrape, **labels: str) -> float:
        return now.total(name, **labels) - before.total(name, **labels)

    alice, bob = await make_account(http, "malice"), await make_account(http, "mbob")
    a, _ = await connect(gateway.ws_url, alice, cursors={})
    b, _ = await connect(gateway.ws_url, bob, cursors={})
    b2, _ = await connect(gateway.ws_url, bob, cursors={})
    try:
        n = 12
        acks = [await a.send_message(f"m{i}", to_user_id=bob.user_id) for i in range(n)]
        assert all(ack["type"] == "ack" for ack in acks), acks
        conv = acks[0]["conversation_id"]
        await b.wait_messages(conv, n)
        await b2.wait_messages(conv, n)
        # One malformed send: a validation error frame, nothing stored.
        bad = await a.request({"type": "send", "client_msg_id": uuid.uuid4().hex})
        assert bad["type"] == "error", bad
        code = bad["code"]

        def while_open(now: Scrape) -> list[str]:
            wrong = []
            checks = {
                "sends": (delta(SENDS, now, type="send"), n),
                "acks": (delta(ACKS, now, type="ack"), n),
                "ack latencies": (delta(ACK_COUNT, now), n),
                "hellos": (delta(HELLO_COUNT, now), 3),
                "committed": (delta(COMMITTED, now), n),
                "errors": (delta(metrics.ERRORS.exported, now, code=code), 1),
                "sockets": (now.total(metrics.SOCKETS.exported), sockets0 + 3),
            }
            for what, (got, want) in checks.items():
                if got != want:
                    wrong.append(f"{what}: {got} != {want}")
            # Two sockets of bob's got every message (and presence frames besides).
            if delta(metrics.DELIVERIES.exported, now) < 2 * n:
                wrong.append(f"deliveries {delta(metrics.DELIVERIES.exported, now)} < {2 * n}")
            if delta(HOST_ENVELOPES, now) < n:
                wrong.append(f"host envelopes {delta(HOST_ENVELOPES, now)} < {n}")
            if delta(metrics.ACTIVATIONS.exported, now, kind="conv") < 1:
                wrong.append("no conversation activated")
            return wrong

        during = await _until(while_open)
        # The ack latency histogram is in Prometheus's layout: cumulative, ending at +Inf.
        buckets = during.buckets(metrics.ACK_SECONDS)
        counts = [buckets[bound] for bound in sorted(buckets)]
        assert counts == sorted(counts) and counts[-1] == during.total(ACK_COUNT), buckets
    finally:
        for sock in (a, b, b2):
            await sock.close()

    await _until(
        lambda now: []
        if now.total(metrics.SOCKETS.exported) == sockets0
        else [f"sockets {now.total(metrics.SOCKETS.exported)} != {sockets0}"]
    )


async def test_rate_limit_rejections_are_counted(
    http: httpx.AsyncClient, gateway: GatewayInfo
) -> None:
    before = await _scrape()
    sender, peer = await make_account(http, "mrate"), await make_account(http, "mpeer")
    a, _ = await connect(gateway.ws_url, sender, cursors={})
    try:
        first = await a.send_message("open", to_user_id=peer.user_id)
        conv = first["conversation_id"]
        burst = gateway.settings.send_burst + 60
        replies = await asyncio.gather(
            *(a.send_message(f"b{i}", conversation_id=conv) for i in range(burst))
        )
    finally:
        await a.close()
    limited = sum(1 for r in replies if r.get("code") == "rate_limited")
    assert limited > 0, "the burst was not rate limited"
    name = metrics.RATE_LIMITED.exported

    def check(now: Scrape) -> list[str]:
        got = now.total(name) - before.total(name)
        return [] if got == limited else [f"rate limited {got} != {limited}"]

    await _until(check)
