"""`direct`: P sender -> receiver pairs, each in its own direct conversation, over WebSocket.

Phase 1 (throughput): closed loop, every sender keeps ``window`` messages in flight and sends
the next on each ack: the highest rate the system sustains with a bounded backlog.
Phase 2 (latency): open loop at half that rate; send -> delivery p50/p99 at a moderate load.
Targets: >= 5,000 msgs/s, >= 25% of the relay's rate, p99 < 50 ms in phase 2.
"""

from __future__ import annotations

import asyncio
import logging
import os

from loadtest.accounts import open_directs
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

MIN_RATE = 5_000.0
MIN_RATIO = 0.25
MAX_P99_MS = 50.0


def plans(target: Target, options: BenchOptions, run_id: str) -> list[WorkerPlan]:
    """One worker plan per process: whole pairs (sender and receiver in one process)."""
    accounts = bench_accounts(target, user_names("bench", 2 * options.pairs), options)
    pairs = [(accounts[2 * i], accounts[2 * i + 1]) for i in range(options.pairs)]
    conversations = asyncio.run(open_directs(target.base_url, pairs))
    items = []
    for i, ((sender, receiver), conv) in enumerate(zip(pairs, conversations, strict=True)):
        devices = [
            DeviceSpec(f"s{i}", sender.user_id, sender.access_token, f"b-{run_id}-s{i}", i + 1),
            DeviceSpec(f"r{i}", receiver.user_id, receiver.access_token, f"b-{run_id}-r{i}"),
        ]
        items.append((devices, FlowSpec(f"s{i}", expected=1, conversation_id=conv)))
    return [
        WorkerPlan(
            index=w,
            ws_url=target.ws_url,
            run_id=run_id,
            devices=[d for devices, _ in bucket for d in devices],
            flows=[flow for _, flow in bucket],
        )
        for w, bucket in enumerate(split_round_robin(items, options.workers))
    ]


def measure(target: Target, options: BenchOptions) -> tuple[Figures, list[str]]:
    """Both phases against one target."""
    run_id = new_run_id()
    worker_plans = plans(target, options, run_id)
    with generator(target, worker_plans, ready_s=120, profile_dir=options.profile_dir) as pool:
        pool.require_all_connected(2 * options.pairs)
        pool.run(Phase(duration_s=options.warmup_s, window=options.window, drain_s=5))
        peak = pool.run(
            Phase(duration_s=options.duration_s, window=options.window, drain_s=10,
                  body_bytes=options.body_bytes),
            profile="direct-peak",
        )
        half = peak.summary.acked_per_s / 2
        paced = pool.run(
            Phase(duration_s=options.duration_s, rate_per_flow=half / options.pairs, drain_s=10,
                  body_bytes=options.body_bytes)
        )
    return figures(peak, paced, half), notes(target.name, peak, paced)


def figures(peak: PhaseOutcome, paced: PhaseOutcome, half_rate: float) -> Figures:
    """The scenario's figures from its two phases."""
    return Figures(
        delivered_per_s=peak.summary.delivered_per_s,
        p50_ms=paced.summary.delivery.p50_ms,
        p99_ms=paced.summary.delivery.p99_ms,
        lost=peak.summary.lost + paced.summary.lost,
        duplicated=peak.summary.duplicated + paced.summary.duplicated,
        extra={
            "peak_ack_p99_ms": peak.summary.ack.p99_ms,
            "peak_delivery_p99_ms": peak.summary.delivery.p99_ms,
            "paced_rate_per_s": half_rate,
            "paced_delivered_per_s": paced.summary.delivered_per_s,
            "ack_p50_ms": paced.summary.ack.p50_ms,
            "ack_p99_ms": paced.summary.ack.p99_ms,
            "unacked": peak.summary.unacked + paced.summary.unacked,
            "errors": {**peak.summary.errors, **paced.summary.errors},
            "server_cores": peak.cpu.server_cores,
            "generator_cores": peak.cpu.generator_cores,
            "profile": peak.profile_lines(),
        },
    )


def notes(name: str, peak: PhaseOutcome, paced: PhaseOutcome) -> list[str]:
    """What limited each phase."""
    cores = os.cpu_count() or 1
    return [
        limit_note(f"{name} throughput", peak, cores),
        limit_note(f"{name} latency at half rate", paced, cores),
    ]


def result(
    warbler: Figures | None, baseline: Figures | None, limits: list[str], options: BenchOptions
) -> ScenarioResult:
    """Figures, targets and the table."""
    out = ScenarioResult(
        scenario="direct",
        warbler=warbler,
        baseline=baseline,
        limits=limits,
        params={"pairs": options.pairs, "window": options.window,
                "duration_s": options.duration_s, "workers": options.workers,
                "body_bytes": options.body_bytes},
    )
    if warbler is not None:
        out.checks = [
            Check("delivered_per_s", warbler.delivered_per_s, ">=", MIN_RATE),
            Check("ratio_to_baseline", out.ratio, ">=", MIN_RATIO),
            Check("p99_ms_at_half_rate", warbler.p99_ms, "<", MAX_P99_MS),
            Check("lost", warbler.lost, "==", 0),
            Check("duplicated", warbler.duplicated, "==", 0),
        ]
    w, b = warbler or Figures(), baseline or Figures()
    out.rows = [
        ("msgs/s at peak (delivered)", fmt(w.delivered_per_s), fmt(b.delivered_per_s)),
        ("paced rate (half of peak)", fmt(w.extra.get("paced_rate_per_s")),
         fmt(b.extra.get("paced_rate_per_s"))),
        ("delivery p50 ms (paced)", fmt(w.p50_ms, digits=2), fmt(b.p50_ms, digits=2)),
        ("delivery p99 ms (paced)", fmt(w.p99_ms, digits=2), fmt(b.p99_ms, digits=2)),
        ("ack p99 ms (paced)", fmt(w.extra.get("ack_p99_ms"), digits=2),
         fmt(b.extra.get("ack_p99_ms"), digits=2)),
        ("delivery p99 ms (peak)", fmt(w.extra.get("peak_delivery_p99_ms"), digits=2),
         fmt(b.extra.get("peak_delivery_p99_ms"), digits=2)),
        ("lost", fmt(w.lost), fmt(b.lost)),
        ("duplicated", fmt(w.duplicated), fmt(b.duplicated)),
        ("unacked", fmt(w.extra.get("unacked")), fmt(b.extra.get("unacked"))),
        ("server cores (peak)", fmt(w.extra.get("server_cores"), digits=2),
         fmt(b.extra.get("server_cores"), digits=2)),
        ("generator cores (peak)", fmt(w.extra.get("generator_cores"), digits=2),
         fmt(b.extra.get("generator_cores"), digits=2)),
    ]
    return out
