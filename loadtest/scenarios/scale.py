"""`scale`: steady load while the bench adds and removes hosts and gateway replicas.

Direct pairs send at a steady open-loop rate through real WebSocket devices that resume as the
protocol asks (a `reconnect` frame or a dropped socket: reconnect, hello with cursors, resend
unacked sends with the same client_msg_id). The run is a sequence of steps of steady load, one
generator phase each, so lost / duplicated / unacked are counted exactly per step:

1. ``static``: 1 pool host, 1 gateway replica, no event: the baseline of the same load;
2. ``add host`` (``EVENT_AT_S`` into the step), 3. ``add host`` again;
4. ``add replica`` while ``--surge`` sockets connect at once (a second generator process);
5. ``remove host`` (the original one: its shards move to the added hosts);
6. ``remove replica`` (a longer step: the replica drains its sockets first).

A Ray driver joined to the cluster (`loadtest.scaling`) performs the events and polls every
pool host's ``stats()`` and the running replicas four times a second. The cluster must run with
the host autoscaler off (``WARBLER_HOST_AUTOSCALE=false``) so that only these events happen; a
cluster the bench starts for `scale` gets that, one host and one replica.

Per event: how long the call took; for a new host, the time to its first envelope and to its
fair share (>= 80% of an equal split of the pool's envelopes over 1 s); for a move, the
conversations it touched and the slowest ack among their messages in flight during it; for the
replica, when Serve reported it running; for the surge, the max and p99 time to hello_ok.
Targets (issue 7): fair share within 5 s, a removed host's shards served elsewhere within 5 s,
0 lost and 0 duplicated in every step, no surge socket waiting 2 s or more for hello_ok.

The relay runs the static step and the surge (it cannot scale): the same load and the same
1,000 sockets at once, side by side with Warbler's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any

from loadtest.accounting import NS_PER_S, merge_all, percentile
from loadtest.generator import DeviceSpec, GeneratorPool, Phase, WorkerPlan, WorkerResult
from loadtest.report import Check, Figures, ScenarioResult, fmt
from loadtest.scaling import ClusterControl, EventRecord, restore_gateway
from loadtest.scenarios import direct
from loadtest.scenarios.common import (
    BenchOptions,
    PhaseOutcome,
    Pool,
    bench_accounts,
    generator,
    limit_note,
    new_run_id,
    outcome,
    user_names,
)
from loadtest.servers import Target
from loadtest.timeline import (
    bucket_timeline,
    fair_share_s,
    first_handled_s,
    lost_by_second,
    move_impact,
    moved_conversations,
    render_timeline,
)

logger = logging.getLogger(__name__)

MAX_SHARE_S = 5.0
MAX_MOVE_S = 5.0
MAX_SURGE_S = 2.0
EVENT_AT_S = 3.0
# The replica removal waits for its sockets to drain (serve.app's graceful shutdown, 30 s).
REMOVE_REPLICA_EXTRA_S = 32.0
# What a cluster started for this scenario needs (--cluster-env overrides each).
CLUSTER_ENV = {
    "WARBLER_HOST_AUTOSCALE": "false",
    "WARBLER_NUM_HOSTS": "1",
    "WARBLER_GATEWAY_MIN_REPLICAS": "1",
    "WARBLER_GATEWAY_INITIAL_REPLICAS": "1",
}


@dataclass
class ScaleOptions(BenchOptions):
    """The shared knobs plus this scenario's own."""

    scale_pairs: int = 50
    scale_rate: float = 500.0  # messages per second over all pairs (open loop)
    step_s: float = 15.0  # seconds of load per step
    surge: int = 1000  # sockets opened at once while a replica is added


def scale_options(options: BenchOptions) -> ScaleOptions:
    """``options`` as ScaleOptions (defaults for this scenario's own knobs)."""
    if isinstance(options, ScaleOptions):
        return options
    return ScaleOptions(**vars(options))


@dataclass(frozen=True)
class Step:
    """One phase of steady load and the event in it (None: the static baseline)."""

    name: str
    action: str | None = None
    surge: bool = False
    extra_s: float = 0.0
    kwargs: dict[str, Any] = field(default_factory=dict)


STEPS = (
    Step("static"),
    Step("add host", "add host"),
    Step("add host", "add host"),
    Step("add replica + surge", "set replicas", surge=True, kwargs={"count": 2}),
    Step("remove host", "remove host"),
    Step("remove replica", "set replicas", extra_s=REMOVE_REPLICA_EXTRA_S, kwargs={"count": 1}),
)


@dataclass
class StepRun:
    """What one step measured."""

    step: Step
    run: PhaseOutcome
    start_ns: int
    load_avg_1m: float
    event: EventRecord | None = None
    surge: WorkerResult | None = None


def surge_plan(target: Target, options: ScaleOptions, run_id: str) -> WorkerPlan:
    """``options.surge`` deferred devices over the bench users, all connecting at once."""
    users = bench_accounts(target, user_names("bench", 2 * options.scale_pairs), options)
    devices = [
        DeviceSpec(f"g{i}", u.user_id, u.access_token, f"g-{run_id}-{i}", deferred=True)
        for i, u in ((i, users[i % len(users)]) for i in range(options.surge))
    ]
    return WorkerPlan(
        index=99, ws_url=target.ws_url, run_id=run_id, devices=devices,
        connect_concurrency=options.surge, max_connect_failures=options.surge,
        connect_timeout_s=15.0,
    )


def _members(plans: list[WorkerPlan]) -> dict[int, tuple[int, int]]:
    """Conversation -> (sender, receiver) user ids, from direct's plans (s{i} / r{i})."""
    out: dict[int, tuple[int, int]] = {}
    for plan in plans:
        users = {d.key: d.user_id for d in plan.devices}
        for flow in plan.flows:
            if flow.conversation_id is not None:
                receiver = "r" + flow.sender[1:]
                out[flow.conversation_id] = (users[flow.sender], users[receiver])
    return out


def _run_step(
    pool: Pool,
    step: Step,
    phase: Phase,
    control: ClusterControl | None,
    surge_pool: GeneratorPool | None,
) -> StepRun:
    phase = replace(phase, duration_s=phase.duration_s + step.extra_s)
    load = os.getloadavg()[0]
    window = pool.cpu_window()
    window.start()
    start_at = pool.pool.start_phase(phase)
    surge_phase = Phase(duration_s=0.0, connect_deferred=True, drain_s=1.0, quiet_s=0.2)
    time.sleep(max(0.0, start_at + EVENT_AT_S - time.time()))
    pending = None
    if control is not None and step.action is not None:
        kwargs = dict(step.kwargs)
        if step.action == "remove host":
            kwargs["host"] = control.host_names()[0]  # the oldest: it carries the most
        logger.warning("scale: %s %s", step.name, kwargs or "")
        pending = control.start_event(step.action, step.name, **kwargs)
    if step.surge and surge_pool is not None:
        surge_pool.start_phase(surge_phase, lead_s=0.0)
    run = outcome(pool.pool.collect(phase), window.stop())
    surge = surge_pool.collect(surge_phase)[0] if step.surge and surge_pool is not None else None
    event = pending.result(120.0) if pending is not None else None
    return StepRun(step, run, int(start_at * NS_PER_S), load, event, surge)


def measure(target: Target, bench_options: BenchOptions) -> tuple[Figures, list[str]]:
    """Every step against one target (the relay: the static step and the surge only)."""
    options = scale_options(bench_options)
    run_id = new_run_id()
    pair_options = replace(options, pairs=options.scale_pairs)
    plans = [replace(p, resume=True) for p in direct.plans(target, pair_options, run_id)]
    members = _members(plans)
    surge = surge_plan(target, options, run_id)
    rate_per_flow = options.scale_rate / options.scale_pairs
    phase = Phase(duration_s=options.step_s, rate_per_flow=rate_per_flow, timeline=True,
                  drain_s=30.0, quiet_s=1.0, body_bytes=options.body_bytes)
    scaling = target.data_dir is not None and target.name != "relay"
    steps = [s for s in STEPS if scaling or s.action is None or s.surge]
    limits: list[str] = []
    with ExitStack() as stack:
        control = stack.enter_context(ClusterControl(target.data_dir)) if (
            scaling and target.data_dir is not None) else None
        if control is not None:
            limits += _prepare(control)
        pool = stack.enter_context(generator(target, plans, ready_s=120))
        pool.require_all_connected(2 * options.scale_pairs)
        surge_pool = stack.enter_context(GeneratorPool([surge]))
        surge_pool.wait_ready(60.0)
        pool.run(Phase(duration_s=options.warmup_s, rate_per_flow=rate_per_flow, drain_s=5))
        runs = [_run_step(pool, step, phase, control, surge_pool) for step in steps]
        samples = list(control.samples) if control is not None else []
        if control is not None:
            limits += _restore(control)
    return _figures(runs, samples, members), limits + _notes(target.name, runs)


def _prepare(control: ClusterControl) -> list[str]:
    """One pool host and one replica before the run (a --host cluster may have more)."""
    notes = []
    if control.settings.host_autoscale:
        notes.append("the cluster's host autoscaler is on (WARBLER_HOST_AUTOSCALE): it may "
                     "add or remove hosts besides the bench's events")
    hosts = control.host_names()
    for extra in hosts[1:]:
        logger.warning("scale: removing host %s before the run", extra)
        control.start_event("remove host", "prepare", host=extra).result(120.0)
    if control.replicas() != 1:
        control.start_event("set replicas", "prepare", count=1).result(120.0)
    control.events.clear()
    return notes


def _restore(control: ClusterControl) -> list[str]:
    """Give the gateway back its configured autoscaling (the hosts stay as the run left them)."""
    try:
        control.call(asyncio.to_thread(restore_gateway, control.settings), 120.0)
    except Exception as exc:  # reported, not fatal: the figures stand
        return [f"restoring the gateway's autoscaling config failed: {exc!r}"]
    return []


def _event_json(record: EventRecord, runs: list[StepRun], samples: list[Any],
                members: dict[int, tuple[int, int]]) -> dict[str, Any]:
    mark = record.mark
    out: dict[str, Any] = {
        "event": record.kind,
        "host": record.host,
        "call_s": (mark.end_ns - mark.start_ns) / NS_PER_S,
        "error": record.error,
    }
    run = next(r.run for r in runs if r.event is record)
    if record.kind == "add host" and record.host is not None:
        out["first_envelope_s"] = first_handled_s(samples, record.host, mark.start_ns)
        out["fair_share_s"] = fair_share_s(samples, record.host, mark.start_ns)
    if record.before is not None and record.after is not None:
        moved = moved_conversations(record.before, record.after, members)
        impact = move_impact(run.ledger, moved, mark)
        out.update(
            moved_conversations=impact.conversations,
            moved_in_flight=impact.in_flight,
            moved_max_ack_ms=impact.max_ack_ms,
            moved_wait_s=impact.unavailable_s,
            moved_unacked=impact.unacked,
        )
    if record.replicas_ready_ns is not None:
        out["replicas_ready_s"] = (record.replicas_ready_ns - mark.start_ns) / NS_PER_S
    return out


def _surge_json(result: WorkerResult | None, wanted: int) -> dict[str, Any] | None:
    if result is None:
        return None
    times = sorted(result.connect_s.values())
    return {
        "sockets": wanted,
        "connected": len(times),
        "failures": result.connect_failures,
        "errors": result.connect_errors,
        "p50_s": percentile(times, 50),
        "p99_s": percentile(times, 99),
        "max_s": times[-1] if times else None,
    }


def _figures(
    runs: list[StepRun], samples: list[Any], members: dict[int, tuple[int, int]]
) -> Figures:
    ledger = merge_all(r.run.ledger for r in runs)
    start_ns = runs[0].start_ns
    end_ns = max((ledger.last_delivery_ns or start_ns), (ledger.last_ack_ns or start_ns))
    events = [r.event for r in runs if r.event is not None]
    buckets = bucket_timeline(ledger, samples, [e.mark for e in events], start_ns, end_ns)
    lost_at = lost_by_second(ledger, start_ns)
    static = runs[0].run.summary
    moving = [r.run.summary for r in runs[1:]] or [static]
    surge_run = next((r for r in runs if r.surge is not None), None)
    wanted = len(surge_run.surge.connect_s) + surge_run.surge.connect_failures if (
        surge_run is not None and surge_run.surge is not None) else 0
    delivered = sum(s.delivered for s in moving)
    window_s = sum(s.window_s for s in moving)
    events_json = [_event_json(e, runs, samples, members) for e in events]
    return Figures(
        delivered_per_s=delivered / window_s if window_s > 0 else None,
        p50_ms=percentile([m for r in runs[1:] for m in r.run.ledger.delivery_ms], 50)
        if len(runs) > 1 else static.delivery.p50_ms,
        p99_ms=percentile([m for r in runs[1:] for m in r.run.ledger.delivery_ms], 99)
        if len(runs) > 1 else static.delivery.p99_ms,
        lost=sum(r.run.summary.lost for r in runs),
        duplicated=sum(r.run.summary.duplicated for r in runs),
        extra={
            "static_delivered_per_s": static.delivered_per_s,
            "static_ack_p50_ms": static.ack.p50_ms,
            "static_ack_p99_ms": static.ack.p99_ms,
            "events_ack_p50_ms": percentile([m for r in runs[1:] for m in r.run.ledger.ack_ms],
                                            50),
            "events_ack_p99_ms": percentile([m for r in runs[1:] for m in r.run.ledger.ack_ms],
                                            99),
            "unacked": sum(r.run.summary.unacked for r in runs),
            "steps": [_step_json(r) for r in runs],
            "events": events_json,
            "surge": _surge_json(surge_run.surge if surge_run else None, wanted),
            "max_fair_share_s": _max_of(events_json, "fair_share_s", "add host"),
            "max_first_envelope_s": _max_of(events_json, "first_envelope_s", "add host"),
            "max_removal_s": _max_of(events_json, "call_s", "remove host"),
            "max_moved_wait_s": _max_of(events_json, "moved_wait_s", "remove host"),
            "lost_by_second": lost_at,
            "timeline": [b.to_json() for b in buckets],
            "timeline_text": render_timeline(buckets),
        },
    )


def _max_of(events: list[dict[str, Any]], key: str, kind: str) -> float | None:
    values = [e.get(key) for e in events if e["event"] == kind]
    if not values or any(v is None for v in values):
        return None  # an event that never got there fails the target
    return max(float(v) for v in values if v is not None)


def _step_json(r: StepRun) -> dict[str, Any]:
    s = r.run.summary
    return {
        "step": r.step.name,
        "sent": s.sent,
        "acked": s.acked,
        "lost": s.lost,
        "duplicated": s.duplicated,
        "unacked": s.unacked,
        "delivered_per_s": s.delivered_per_s,
        "ack_p50_ms": s.ack.p50_ms,
        "ack_p99_ms": s.ack.p99_ms,
        "delivery_p99_ms": s.delivery.p99_ms,
        "reconnects": sum(w.stats.reconnects for w in r.run.results),
        "errors": s.errors,
        "load_avg_1m": r.load_avg_1m,
        "server_cores": r.run.cpu.server_cores,
    }


def _notes(name: str, runs: list[StepRun]) -> list[str]:
    cores = os.cpu_count() or 1
    return [limit_note(f"{name} {r.step.name}", r.run, cores) for r in runs
            if r.step.action is None or r.step.surge]


def result(
    warbler: Figures | None, baseline: Figures | None, limits: list[str],
    bench_options: BenchOptions,
) -> ScenarioResult:
    """Figures, targets, the table and the timeline."""
    options = scale_options(bench_options)
    out = ScenarioResult(
        scenario="scale",
        warbler=warbler,
        baseline=baseline,
        limits=limits,
        params={"pairs": options.scale_pairs, "rate_per_s": options.scale_rate,
                "step_s": options.step_s, "event_at_s": EVENT_AT_S, "surge": options.surge,
                "steps": [s.name for s in STEPS]},
    )
    if warbler is not None:
        surge = warbler.extra.get("surge") or {}
        out.checks = [
            Check("fair_share_s", warbler.extra.get("max_fair_share_s"), "<", MAX_SHARE_S),
            Check("removal_s", warbler.extra.get("max_removal_s"), "<", MAX_MOVE_S),
            Check("moved_wait_s", warbler.extra.get("max_moved_wait_s"), "<", MAX_MOVE_S),
            Check("surge_max_s", surge.get("max_s"), "<", MAX_SURGE_S),
            Check("surge_failures", surge.get("failures"), "==", 0),
            Check("lost", warbler.lost, "==", 0),
            Check("duplicated", warbler.duplicated, "==", 0),
        ]
    w, b = warbler or Figures(), baseline or Figures()
    ws, bs = w.extra.get("surge") or {}, b.extra.get("surge") or {}
    out.rows = [
        ("static: delivered msgs/s", fmt(w.extra.get("static_delivered_per_s")),
         fmt(b.extra.get("static_delivered_per_s"))),
        ("static: ack p50 / p99 ms", _pair(w, "static_ack_p50_ms", "static_ack_p99_ms"),
         _pair(b, "static_ack_p50_ms", "static_ack_p99_ms")),
        ("events: delivered msgs/s", fmt(w.delivered_per_s), "-"),
        ("events: ack p50 / p99 ms", _pair(w, "events_ack_p50_ms", "events_ack_p99_ms"), "-"),
        ("surge: sockets connected", f"{fmt(ws.get('connected'))} of {fmt(ws.get('sockets'))}",
         f"{fmt(bs.get('connected'))} of {fmt(bs.get('sockets'))}"),
        ("surge: hello_ok p99 / max s",
         f"{fmt(ws.get('p99_s'), digits=2)} / {fmt(ws.get('max_s'), digits=2)}",
         f"{fmt(bs.get('p99_s'), digits=2)} / {fmt(bs.get('max_s'), digits=2)}"),
    ]
    for step in w.extra.get("steps") or []:
        out.rows.append((
            f"step {step['step']}: lost / dup / unacked",
            f"{fmt(step['lost'])} / {fmt(step['duplicated'])} / {fmt(step['unacked'])}"
            f" (reconnects {fmt(step['reconnects'])})",
            "-",
        ))
    for event in w.extra.get("events") or []:
        out.rows.append((f"event {event['event']}{' ' + event['host'] if event['host'] else ''}",
                         _event_cell(event), "-"))
    out.sections = list(w.extra.get("timeline_text") or [])
    return out


def _pair(f: Figures, a: str, b: str) -> str:
    return f"{fmt(f.extra.get(a), digits=1)} / {fmt(f.extra.get(b), digits=1)}"


def _event_cell(e: dict[str, Any]) -> str:
    parts = [f"call {fmt(e.get('call_s'), digits=2)} s"]
    if "first_envelope_s" in e:
        parts.append(f"first envelope {fmt(e.get('first_envelope_s'), digits=2)} s")
        parts.append(f"fair share {fmt(e.get('fair_share_s'), digits=2)} s")
    if "moved_conversations" in e:
        parts.append(f"moved convs {fmt(e.get('moved_conversations'))}")
        parts.append(f"max ack {fmt(e.get('moved_max_ack_ms'), digits=0)} ms")
        parts.append(f"wait {fmt(e.get('moved_wait_s'), digits=2)} s")
    if "replicas_ready_s" in e:
        parts.append(f"running after {fmt(e.get('replicas_ready_s'), digits=2)} s")
    if e.get("error"):
        parts.append(f"error {e['error']}")
    return ", ".join(parts)

