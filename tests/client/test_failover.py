"""A gateway replica dies (kill -9) mid-conversation: the SDK reconnects by itself, resumes from
its cursors, resends unacked sends, and the application sees every message exactly once, in
order, on both sides."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from client import WarblerClient
from tests.support import GatewayInfo
from warbler.protocol import MessageFrame

pytestmark = [pytest.mark.ray, pytest.mark.slow]

PASSWORD = "correct horse battery"
TOTAL = 40
KILL_AFTER = 12


def replica_pids(app_name: str) -> list[int]:
    """PIDs of the live gateway replicas of one Serve app (this test's own deployment)."""
    # The GCS's actor table (the public state API needs the dashboard, which tests leave off).
    from ray._private import state

    prefix = f"ServeReplica:{app_name}:"
    return [
        int(info["Pid"])
        for info in state.actors().values()
        if str(info.get("ActorClassName", "")).startswith(prefix)
        and info.get("State") == "ALIVE"
        and info.get("Pid")
    ]


async def wait_messages(client: WarblerClient, n: int, timeout_s: float) -> list[MessageFrame]:
    out: list[MessageFrame] = []
    async with asyncio.timeout(timeout_s):
        while len(out) < n:
            event = await client.next_event()
            if isinstance(event, MessageFrame):
                out.append(event)
    return out


async def test_killed_gateway_replicas_lose_and_repeat_nothing(
    gateway: GatewayInfo, uid: str
) -> None:
    if os.environ.get("WARBLER_TEST_GATEWAY_URL"):
        pytest.skip("kills the tests' own deployment, not the external WARBLER_TEST_GATEWAY_URL")
    async with WarblerClient(gateway.url) as alice, WarblerClient(gateway.url) as bob:
        await alice.register(f"alice_{uid}", PASSWORD)
        await bob.register(f"bob_{uid}", PASSWORD)
        await alice.connect()
        await bob.connect()
        conv = (await alice.open_direct(bob.user_id)).id

        killed: list[int] = []

        async def send_all() -> list[int]:
            seqs = []
            for i in range(TOTAL):
                if i == KILL_AFTER:
                    # Every replica of this app: whichever one holds each socket, it dies.
                    killed.extend(replica_pids(gateway.app_name))
                    for pid in killed:
                        os.kill(pid, signal.SIGKILL)
                # Sends in flight when the replica dies are resent on the next socket.
                sent = await alice.send(f"m{i}", conversation_id=conv, timeout_s=180)
                seqs.append(sent.seq)
            return seqs

        seqs = await send_all()
        assert killed, "no gateway replica found to kill"
        assert seqs == list(range(seqs[0], seqs[0] + TOTAL)), "acked seqs are not gapless"

        got = await wait_messages(bob, TOTAL, timeout_s=180)
        assert [m.seq for m in got] == seqs
        assert [m.body for m in got] == [f"m{i}" for i in range(TOTAL)]
        own = await wait_messages(alice, TOTAL, timeout_s=60)
        assert [m.seq for m in own] == seqs
        assert alice.reconnects >= 1 and bob.reconnects >= 1

        # Nothing more arrives: no duplicate was held back.
        await asyncio.sleep(1.0)
        for client in (alice, bob):
            extra = []
            while not client._events.empty():
                item = client._events.get_nowait()
                if isinstance(item, MessageFrame):
                    extra.append(item.seq)
            assert extra == [], f"duplicates: {extra}"
        # And the log holds each message once.
        bodies = [m.body async for m in bob.iter_history(conv)]
        assert bodies == [f"m{i}" for i in range(TOTAL)]
