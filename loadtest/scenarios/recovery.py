"""`recovery`: under steady load, kill -9 a host's worker, later a gateway replica.

Direct pairs send at a steady open-loop rate; every device resumes as the protocol asks
(reconnect with backoff, hello with its cursors, resend unacked sends with the same
client_msg_id). A quarter into the run the bench kills one ActorHost worker process with
SIGKILL, at 60% one gateway replica (only processes of the node serving the target's port).

Recovery time of a fault: the longest any message sent before the next fault and delivered
after this one waited, counted from the fault (`loadtest.accounting.recovery_s`): the outage as
the worst-hit conversation saw it. Targets: < 3 s each, 0 lost, 0 duplicated, 0 unacked.
The relay has no recovery to compare with: its side is left empty.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import replace

from loadtest.accounting import NS_PER_S, recovery_s
from loadtest.generator import Phase
from loadtest.procstats import ProcessGroup
from loadtest.report import Check, Figures, ScenarioResult, fmt
from loadtest.scenarios import direct
from loadtest.scenarios.common import (
    BenchOptions,
    generator,
    limit_note,
    new_run_id,
    outcome,
)
from loadtest.servers import Target
from warbler.errors import ErrorCode, WarblerError

logger = logging.getLogger(__name__)

MAX_RECOVERY_S = 3.0
FAULTS = (("host", 0.25), ("gateway replica", 0.6))


def _kill_one(target: Target, kind: str) -> tuple[int, int]:
    """SIGKILL one process of this kind on the target's node; returns (pid, when in ns)."""
    pids = target.role_pids[kind]()
    if not pids:
        raise WarblerError(ErrorCode.UNAVAILABLE, f"no {kind} process found to kill")
    pid = pids[0]
    logger.warning("recovery: kill -9 %s pid %s (of %s)", kind, pid, pids)
    when = time.time_ns()
    os.kill(pid, signal.SIGKILL)
    return pid, when


def measure(target: Target, options: BenchOptions) -> tuple[Figures, list[str]]:
    """Steady load, two faults, the recovery of each."""
    missing = [kind for kind, _ in FAULTS if kind not in target.role_pids]
    if missing:
        raise WarblerError(ErrorCode.UNSUPPORTED, f"{target.name} has no {missing} to kill")
    run_id = new_run_id()
    pair_options = replace(options, pairs=options.recovery_pairs)
    plans = [replace(p, resume=True) for p in direct.plans(target, pair_options, run_id)]
    duration = options.recovery_duration_s
    rate_per_flow = options.recovery_rate / options.recovery_pairs
    phase = Phase(duration_s=duration, rate_per_flow=rate_per_flow, timeline=True,
                  drain_s=30.0, quiet_s=2.0, body_bytes=options.body_bytes)
    with generator(target, plans, ready_s=120) as pool:
        pool.require_all_connected(2 * options.recovery_pairs)
        pool.run(Phase(duration_s=options.warmup_s, rate_per_flow=rate_per_flow, drain_s=5))
        server = ProcessGroup(target.server_pids())
        window = pool.cpu_window()
        window.start()
        start_at = pool.pool.start_phase(phase)
        faults: list[tuple[str, int, int]] = []
        for kind, at in FAULTS:
            time.sleep(max(0.0, start_at + at * duration - time.time()))
            pid, when = _kill_one(target, kind)
            faults.append((kind, pid, when))
        run = outcome(pool.pool.collect(phase), window.stop())
    timeline = run.ledger.timeline or []
    end_ns = int((start_at + duration) * NS_PER_S)
    recoveries = {}
    for i, (kind, _pid, when) in enumerate(faults):
        until = faults[i + 1][2] if i + 1 < len(faults) else end_ns
        recoveries[kind] = recovery_s(timeline, when, until)
    outages = [(b - a) / NS_PER_S for r in run.results for a, b in r.stats.outages]
    summary = run.summary
    figures = Figures(
        delivered_per_s=summary.delivered_per_s,
        p50_ms=summary.delivery.p50_ms,
        p99_ms=summary.delivery.p99_ms,
        lost=summary.lost,
        duplicated=summary.duplicated,
        extra={
            "recovery_s": max(recoveries.values()),
            "host_recovery_s": recoveries["host"],
            "replica_recovery_s": recoveries["gateway replica"],
            "killed": {kind: pid for kind, pid, _ in faults},
            "unacked": summary.unacked,
            "sent": summary.sent,
            "reconnects": sum(r.stats.reconnects for r in run.results),
            "longest_socket_outage_s": max(outages, default=0.0),
            "max_delivery_ms": summary.delivery.max_ms,
            "errors": summary.errors,
            "server_processes": len(server.pids),
        },
    )
    limits = [limit_note(f"{target.name} under faults", run, os.cpu_count() or 1)]
    return figures, limits


def result(
    warbler: Figures | None, baseline: Figures | None, limits: list[str], options: BenchOptions
) -> ScenarioResult:
    """Figures, targets and the table (no baseline: the relay cannot recover)."""
    out = ScenarioResult(
        scenario="recovery",
        warbler=warbler,
        baseline=None,
        limits=[*limits, "baseline: the relay keeps no state to recover; no comparison"],
        ratio_of="recovery_s",
        params={"pairs": options.recovery_pairs, "rate_per_s": options.recovery_rate,
                "duration_s": options.recovery_duration_s,
                "faults": dict(FAULTS)},
    )
    if warbler is not None:
        out.checks = [
            Check("host_recovery_s", warbler.extra.get("host_recovery_s"), "<", MAX_RECOVERY_S),
            Check("replica_recovery_s", warbler.extra.get("replica_recovery_s"), "<",
                  MAX_RECOVERY_S),
            Check("lost", warbler.lost, "==", 0),
            Check("duplicated", warbler.duplicated, "==", 0),
            Check("unacked", warbler.extra.get("unacked"), "==", 0),
        ]
    w = (warbler or Figures())
    out.rows = [
        ("recovery after host kill s", fmt(w.extra.get("host_recovery_s"), digits=2), "-"),
        ("recovery after replica kill s", fmt(w.extra.get("replica_recovery_s"), digits=2), "-"),
        ("delivered msgs/s (whole run)", fmt(w.delivered_per_s), "-"),
        ("delivery p50 / p99 ms", f"{fmt(w.p50_ms, digits=1)} / {fmt(w.p99_ms, digits=1)}", "-"),
        ("lost / duplicated / unacked",
         f"{fmt(w.lost)} / {fmt(w.duplicated)} / {fmt(w.extra.get('unacked'))}", "-"),
        ("reconnects", fmt(w.extra.get("reconnects")), "-"),
    ]
    return out
