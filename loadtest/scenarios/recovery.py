"""`recovery`: under steady load, kill -9 a host's worker, later a gateway replica.

Direct pairs send at a steady open-loop rate; every device resumes as the protocol asks
(reconnect with backoff, hello with its cursors, resend unacked sends with the same
client_msg_id). Two phases of steady load, one per fault: ``FAULT_AT_S`` into the first the
bench kills one ActorHost worker process with SIGKILL, into the second one gateway replica
(only processes of the node serving the target's port), and keeps the load on for
``recovery_after_s`` more seconds.

Recovery time of a fault: the longest any message sent in its phase and delivered after the
kill waited, counted from the kill (`loadtest.accounting.recovery_s`): the outage as the
worst-hit conversation saw it. Targets: < 3 s each, 0 lost, 0 duplicated, 0 unacked.
The relay has no recovery to compare with: its side is left empty.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, replace

from loadtest.accounting import NS_PER_S, recovery_s
from loadtest.generator import Phase
from loadtest.report import Check, Figures, ScenarioResult, fmt
from loadtest.scenarios import direct
from loadtest.scenarios.common import (
    BenchOptions,
    PhaseOutcome,
    Pool,
    generator,
    limit_note,
    new_run_id,
    outcome,
)
from loadtest.servers import Target
from warbler.errors import ErrorCode, WarblerError

logger = logging.getLogger(__name__)

MAX_RECOVERY_S = 3.0
# One phase per fault, in this order; the kill comes FAULT_AT_S into the phase.
FAULTS = ("host", "gateway replica")
FAULT_AT_S = 5.0


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


@dataclass
class _FaultRun:
    kind: str
    pid: int
    alive_before: int  # processes of that role just before the kill
    recovery_s: float
    run: PhaseOutcome


def _one_fault(pool: Pool, target: Target, kind: str, phase: Phase) -> _FaultRun:
    """One phase of steady load with one kill ``FAULT_AT_S`` into it."""
    alive = len(target.role_pids[kind]())
    window = pool.cpu_window()
    window.start()
    start_at = pool.pool.start_phase(phase)
    time.sleep(max(0.0, start_at + FAULT_AT_S - time.time()))
    pid, when = _kill_one(target, kind)
    run = outcome(pool.pool.collect(phase), window.stop())
    end_ns = int((start_at + phase.duration_s) * NS_PER_S)
    return _FaultRun(kind, pid, alive, recovery_s(run.ledger.timeline or [], when, end_ns), run)


def measure(target: Target, options: BenchOptions) -> tuple[Figures, list[str]]:
    """Steady load; one phase per fault; the recovery of each."""
    missing = [kind for kind in FAULTS if kind not in target.role_pids]
    if missing:
        raise WarblerError(ErrorCode.UNSUPPORTED, f"{target.name} has no {missing} to kill")
    run_id = new_run_id()
    pair_options = replace(options, pairs=options.recovery_pairs)
    plans = [replace(p, resume=True) for p in direct.plans(target, pair_options, run_id)]
    rate_per_flow = options.recovery_rate / options.recovery_pairs
    phase = Phase(duration_s=FAULT_AT_S + options.recovery_after_s, rate_per_flow=rate_per_flow,
                  timeline=True, drain_s=30.0, quiet_s=2.0, body_bytes=options.body_bytes)
    with generator(target, plans, ready_s=120) as pool:
        pool.require_all_connected(2 * options.recovery_pairs)
        pool.run(Phase(duration_s=options.warmup_s, rate_per_flow=rate_per_flow, drain_s=5))
        faults = [_one_fault(pool, target, kind, phase) for kind in FAULTS]
    summaries = [f.run.summary for f in faults]
    outages = [
        (b - a) / NS_PER_S for f in faults for r in f.run.results for a, b in r.stats.outages
    ]
    by_kind = {f.kind: f for f in faults}
    errors: dict[str, int] = {}
    for summary in summaries:
        for code, n in summary.errors.items():
            errors[code] = errors.get(code, 0) + n
    last = summaries[-1]
    figures = Figures(
        delivered_per_s=sum(s.delivered for s in summaries) / sum(s.window_s for s in summaries),
        p50_ms=last.delivery.p50_ms,
        p99_ms=last.delivery.p99_ms,
        lost=sum(s.lost for s in summaries),
        duplicated=sum(s.duplicated for s in summaries),
        extra={
            "recovery_s": max(f.recovery_s for f in faults),
            "host_recovery_s": by_kind["host"].recovery_s,
            "replica_recovery_s": by_kind["gateway replica"].recovery_s,
            "killed": {f.kind: f.pid for f in faults},
            "alive_before_kill": {f.kind: f.alive_before for f in faults},
            "unacked": sum(s.unacked for s in summaries),
            "sent": sum(s.sent for s in summaries),
            "reconnects": {f.kind: sum(r.stats.reconnects for r in f.run.results) for f in faults},
            "longest_socket_outage_s": max(outages, default=0.0),
            "max_delivery_ms": {f.kind: f.run.summary.delivery.max_ms for f in faults},
            "errors": errors,
        },
    )
    cores = os.cpu_count() or 1
    limits = [limit_note(f"{target.name} around the {f.kind} kill", f.run, cores) for f in faults]
    for f in faults:
        if f.alive_before < 2:
            limits.append(
                f"{target.name}: only {f.alive_before} {f.kind} process(es) before the kill: "
                "nothing could take over, so this is a full outage until it is replaced"
            )
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
                "fault_at_s": FAULT_AT_S, "after_s": options.recovery_after_s,
                "faults": list(FAULTS)},
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
        ("reconnects (host / replica phase)",
         " / ".join(fmt(n) for n in (w.extra.get("reconnects") or {}).values()) or "-", "-"),
    ]
    return out
