"""The multi-process load generator against the relay: every send is accounted for once,
and its results merge across processes."""

from __future__ import annotations

import asyncio

from loadtest.accounts import open_directs, provision
from loadtest.generator import DeviceSpec, FlowSpec, GeneratorPool, Phase, WorkerPlan
from loadtest.procstats import CpuWindow, ProcessGroup
from loadtest.scenarios.common import outcome
from loadtest.servers import Target

PAIRS = 4
QUOTA = 25


def test_two_workers_send_their_quota_and_everything_is_delivered(
    relay: Target, uid: str
) -> None:
    accounts = asyncio.run(provision(relay.base_url, [f"g{uid}u{i}" for i in range(2 * PAIRS)]))
    pairs = [(accounts[2 * i], accounts[2 * i + 1]) for i in range(PAIRS)]
    convs = asyncio.run(open_directs(relay.base_url, pairs))
    plans = []
    for w in range(2):
        devices, flows = [], []
        # Senders in one worker, receivers in the other: deliveries must meet sends in merge.
        for i, ((a, b), conv) in enumerate(zip(pairs, convs, strict=True)):
            if w == 0:
                devices.append(DeviceSpec(f"s{i}", a.user_id, a.access_token, f"s{i}", i + 1))
                flows.append(FlowSpec(f"s{i}", expected=1, conversation_id=conv))
            else:
                devices.append(DeviceSpec(f"r{i}", b.user_id, b.access_token, f"r{i}"))
        plans.append(WorkerPlan(index=w, ws_url=relay.ws_url, run_id=uid, devices=devices,
                                flows=flows))
    with GeneratorPool(plans) as pool:
        ready = pool.wait_ready(60)
        assert [r.connected for r in ready] == [PAIRS, PAIRS]
        window = CpuWindow(ProcessGroup(relay.server_pids()), ProcessGroup(pool.pids))
        window.start()
        closed = outcome(pool.run(Phase(duration_s=30, window=4, max_messages_per_flow=QUOTA,
                                        drain_s=15)), window.stop())
        window.start()
        paced = outcome(pool.run(Phase(duration_s=0.5, rate_per_flow=40, drain_s=15)),
                        window.stop())
    summary = closed.summary
    assert (summary.sent, summary.acked, summary.delivered) == (PAIRS * QUOTA,) * 3
    assert (summary.lost, summary.duplicated, summary.unacked) == (0, 0, 0)
    # CPU is sampled (psutil ticks are 10 ms: a short phase may read 0), so only its presence.
    assert closed.cpu.wall_s > 0 and len(closed.results) == 2
    paced_summary = paced.summary
    assert paced_summary.sent > 0
    assert paced_summary.delivered == paced_summary.acked == paced_summary.sent
    assert paced_summary.lost == 0 and paced_summary.duplicated == 0
