"""`group`: one sender into a group of G members (G = 100 and 1,000), every member online.

For each G: a new group (the sender owns it, the other G - 1 members each have one device,
spread over the generator processes). Phase 1: closed loop (the sender keeps
``--group-window`` messages in flight): the highest delivery rate. Phase 2: open loop at half
that message rate: latency to each member and to the *last* member of each message (the
fan-out's completion).
Targets at G = 1,000: >= 50,000 deliveries/s; p99 to the last member < 200 ms.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from loadtest.accounts import create_group
from loadtest.generator import DeviceSpec, FlowSpec, Phase, WorkerPlan, split_round_robin
from loadtest.report import Check, Figures, ScenarioResult, fmt
from loadtest.scenarios.common import (
    BenchOptions,
    PhaseOutcome,
    bench_accounts,
    generator,
    limit_note,
    new_run_id,
    user_names,
)
from loadtest.servers import Target

logger = logging.getLogger(__name__)

TARGET_MEMBERS = 1000
MIN_DELIVERIES_PER_S = 50_000.0
MAX_LAST_MEMBER_P99_MS = 200.0


def plans(target: Target, members: int, options: BenchOptions, run_id: str) -> list[WorkerPlan]:
    """The sender in worker 0, the G - 1 receivers dealt over every worker."""
    accounts = bench_accounts(target, user_names("bench", members), options)
    owner, others = accounts[0], accounts[1:]
    conv = asyncio.run(create_group(target.base_url, owner, others, f"bench {run_id} g{members}"))
    sender = DeviceSpec("sender", owner.user_id, owner.access_token, f"b-{run_id}-s", 1)
    receivers = [
        DeviceSpec(f"m{i}", a.user_id, a.access_token, f"b-{run_id}-m{i}")
        for i, a in enumerate(others)
    ]
    flow = FlowSpec("sender", expected=len(others), conversation_id=conv)
    buckets = split_round_robin(receivers, options.workers)
    return [
        WorkerPlan(
            index=w,
            ws_url=target.ws_url,
            run_id=run_id,
            devices=([sender] if w == 0 else []) + bucket,
            flows=[flow] if w == 0 else [],
        )
        for w, bucket in enumerate(buckets)
    ]


def measure_one(target: Target, members: int, options: BenchOptions) -> dict[str, Any]:
    """Both phases for one group size."""
    run_id = new_run_id()
    worker_plans = plans(target, members, options, run_id)
    with generator(target, worker_plans, ready_s=180, profile_dir=options.profile_dir) as pool:
        pool.require_all_connected(members)
        window = options.group_window
        pool.run(Phase(duration_s=options.warmup_s, window=window, drain_s=10))
        peak = pool.run(Phase(duration_s=options.duration_s, window=window, drain_s=15,
                              body_bytes=options.body_bytes), profile=f"group{members}-peak")
        half = peak.summary.acked_per_s / 2
        paced = pool.run(Phase(duration_s=options.duration_s, rate_per_flow=half, drain_s=15,
                               body_bytes=options.body_bytes))
    return {"peak": peak, "paced": paced, "half": half}


def measure(target: Target, options: BenchOptions) -> tuple[Figures, list[str]]:
    """Every group size; the figures are those of the largest, the others go in extras."""
    cores = os.cpu_count() or 1
    sizes: dict[str, Any] = {}
    limits = []
    profile: list[str] = []
    main: tuple[PhaseOutcome, PhaseOutcome, float] | None = None
    for members in sorted(options.members):
        run = measure_one(target, members, options)
        peak, paced, half = run["peak"], run["paced"], run["half"]
        sizes[str(members)] = {
            "deliveries_per_s": peak.summary.delivered_per_s,
            "msgs_per_s": peak.summary.acked_per_s,
            "last_member_p50_ms": paced.summary.fanout.p50_ms,
            "last_member_p99_ms": paced.summary.fanout.p99_ms,
            "member_p99_ms": paced.summary.delivery.p99_ms,
            "paced_msgs_per_s": half,
            "lost": peak.summary.lost + paced.summary.lost,
            "duplicated": peak.summary.duplicated + paced.summary.duplicated,
        }
        limits.append(limit_note(f"{target.name} G={members} throughput", peak, cores))
        limits.append(limit_note(f"{target.name} G={members} latency", paced, cores))
        profile += [f"G={members}: {line}" for line in peak.profile_lines()]
        main = (peak, paced, half)
    assert main is not None
    peak, paced, half = main
    figures = Figures(
        delivered_per_s=peak.summary.delivered_per_s,
        p50_ms=paced.summary.fanout.p50_ms,
        p99_ms=paced.summary.fanout.p99_ms,
        lost=sum(s["lost"] for s in sizes.values()),
        duplicated=sum(s["duplicated"] for s in sizes.values()),
        extra={
            "members": max(options.members),
            "msgs_per_s": peak.summary.acked_per_s,
            "member_p99_ms": paced.summary.delivery.p99_ms,
            "paced_msgs_per_s": half,
            "unacked": peak.summary.unacked + paced.summary.unacked,
            "errors": {**peak.summary.errors, **paced.summary.errors},
            "by_members": sizes,
            "profile": profile,
        },
    )
    return figures, limits


def result(
    warbler: Figures | None, baseline: Figures | None, limits: list[str], options: BenchOptions
) -> ScenarioResult:
    """Figures, targets and the table."""
    out = ScenarioResult(
        scenario="group",
        warbler=warbler,
        baseline=baseline,
        limits=limits,
        params={"members": options.members, "window": options.group_window,
                "duration_s": options.duration_s, "workers": options.workers},
    )
    if warbler is not None:
        at_target = warbler.extra.get("by_members", {}).get(str(TARGET_MEMBERS))
        rate = at_target["deliveries_per_s"] if at_target else None
        p99 = at_target["last_member_p99_ms"] if at_target else None
        out.checks = [
            Check(f"deliveries_per_s_at_{TARGET_MEMBERS}", rate, ">=", MIN_DELIVERIES_PER_S),
            Check(f"last_member_p99_ms_at_{TARGET_MEMBERS}", p99, "<", MAX_LAST_MEMBER_P99_MS),
            Check("lost", warbler.lost, "==", 0),
            Check("duplicated", warbler.duplicated, "==", 0),
        ]
    w, b = warbler or Figures(), baseline or Figures()
    wsizes = w.extra.get("by_members", {})
    bsizes = b.extra.get("by_members", {})
    for members in sorted(options.members):
        ws, bs = wsizes.get(str(members), {}), bsizes.get(str(members), {})
        out.rows += [
            (f"G={members} deliveries/s (peak)", fmt(ws.get("deliveries_per_s")),
             fmt(bs.get("deliveries_per_s"))),
            (f"G={members} msgs/s (peak)", fmt(ws.get("msgs_per_s")), fmt(bs.get("msgs_per_s"))),
            (f"G={members} last member p50 ms (half rate)", fmt(ws.get("last_member_p50_ms")),
             fmt(bs.get("last_member_p50_ms"))),
            (f"G={members} last member p99 ms (half rate)", fmt(ws.get("last_member_p99_ms")),
             fmt(bs.get("last_member_p99_ms"))),
            (f"G={members} any member p99 ms (half rate)", fmt(ws.get("member_p99_ms")),
             fmt(bs.get("member_p99_ms"))),
            (f"G={members} lost / duplicated",
             f"{fmt(ws.get('lost'))} / {fmt(ws.get('duplicated'))}",
             f"{fmt(bs.get('lost'))} / {fmt(bs.get('duplicated'))}"),
        ]
    return out
