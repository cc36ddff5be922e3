"""`chaos`: steady traffic from real WebSocket devices, one fault per phase.

Direct pairs send at a steady open-loop rate (the `recovery` scenario's devices: reconnect
with backoff, hello with their cursors, resend unacked sends under the same client_msg_id).
One phase per fault; ``FAULT_AT_S`` into it the bench injects the fault and keeps the load on:

- ``host``: kill -9 one ActorHost worker process;
- ``replica``: kill -9 one gateway replica;
- ``redis``: kill -9 the embedded Redis (a cluster the bench started without a Redis URL: its
  supervisor respawns it);
- ``redis-restart``: kill -9 the Redis server the bench started for the cluster
  (``--chaos-redis server``), start it again ``--redis-down-s`` later, empty;
- ``sql-cut``: terminate every PostgreSQL backend of the cluster's database
  (``pg_terminate_backend``; give the cluster a database of its own, the cut takes all of it).

Per fault: recovery time (the longest any message sent in the phase and delivered after the
fault waited, counted from the fault), acked, lost (acked, not delivered to every online
receiver), duplicated (the same seq twice at one device, or one message under two seqs: the
SDK-level dedupe would have to drop it), unacked, and delivered late (more than ``LATE_S``
after its send). Targets: 0 lost, 0 duplicated, 0 unacked, recovery < 3 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from loadtest.accounting import NS_PER_S, recovery_s
from loadtest.generator import Phase
from loadtest.report import Check, Figures, ScenarioResult, fmt
from loadtest.scenarios import direct
from loadtest.scenarios.common import BenchOptions, PhaseOutcome, Pool, generator, outcome
from loadtest.scenarios.scale import ScaleOptions
from loadtest.servers import Target
from serve.ingress import free_port
from warbler.errors import ErrorCode, WarblerError

logger = logging.getLogger(__name__)

MAX_RECOVERY_S = 3.0
FAULT_AT_S = 5.0
LATE_S = 1.0
PROFILE_STEP_S = 0.5
# In this order. The replica comes last: Serve's replacement replica makes the gateway
# rebalance older sockets over the next minute (reconnect frames), which would land in the
# phases after it (measured: 74 reconnects in the redis phase that followed it).
FAULTS = ("host", "redis", "redis-restart", "sql-cut", "replica")


@dataclass
class ChaosOptions(ScaleOptions):
    """The shared knobs plus this scenario's own."""

    faults: list[str] = field(default_factory=lambda: list(FAULTS))
    chaos_redis: str = "embedded"  # or "server": the bench starts a redis-server for the cluster
    redis_down_s: float = 1.0
    chaos_rate: float = 500.0  # messages per second over all pairs (open loop)
    database_url: str | None = None  # the cluster's (for sql-cut)


def chaos_options(options: BenchOptions) -> ChaosOptions:
    """``options`` as ChaosOptions (defaults for this scenario's own knobs)."""
    if isinstance(options, ChaosOptions):
        return options
    return ChaosOptions(**vars(options))


# -- a Redis server of the bench's own --------------------------------------------------------


class RedisServer:
    """``redis-server`` on a free loopback port, no persistence: a restart comes back empty."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise WarblerError(ErrorCode.CONFIG, "--chaos-redis server needs redis-server")
        self.binary = binary
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 (the system's redis-server)
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not _redis_answers(self.port):
            if time.monotonic() > deadline:
                raise WarblerError(ErrorCode.UNAVAILABLE, "redis-server did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def _redis_answers(port: int) -> bool:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


# The server of the cluster the bench started with --chaos-redis server (one per run).
_server: RedisServer | None = None


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """Start the bench's Redis server for the cluster; yields its URL."""
    global _server
    server = RedisServer()
    server.start()
    _server = server
    try:
        yield server.url
    finally:
        _server = None
        server.kill()


# -- faults -------------------------------------------------------------------------------------

Inject = Callable[[Target, ChaosOptions], str]
"""Injects one fault now; returns what it did (for the report)."""


def _kill_role(role: str) -> Inject:
    def inject(target: Target, options: ChaosOptions) -> str:
        pids = target.role_pids[role]()
        if not pids:
            raise WarblerError(ErrorCode.UNAVAILABLE, f"no {role} process to kill")
        os.kill(pids[0], signal.SIGKILL)
        return f"kill -9 {role} pid {pids[0]} (of {len(pids)})"

    return inject


def _kill_embedded_redis(target: Target, options: ChaosOptions) -> str:
    from storage import EmbeddedRedis

    assert target.data_dir is not None
    pid = EmbeddedRedis(target.data_dir / "redis").pid()
    if pid is None:
        raise WarblerError(ErrorCode.UNAVAILABLE, "no embedded Redis pid")
    os.kill(pid, signal.SIGKILL)
    return f"kill -9 embedded Redis pid {pid}"


def _restart_redis_server(target: Target, options: ChaosOptions) -> str:
    server = _server
    assert server is not None
    server.kill()

    def revive() -> None:
        time.sleep(options.redis_down_s)
        server.start()

    threading.Thread(target=revive, name="chaos-redis-revive", daemon=True).start()
    return f"kill -9 redis-server :{server.port}, restarted empty {options.redis_down_s:g}s later"


def _cut_sql(target: Target, options: ChaosOptions) -> str:
    from sqlalchemy import text

    from storage import Database
    from warbler.config import Settings

    url = options.database_url
    assert url is not None
    database = urlsplit(url).path.lstrip("/")

    async def cut() -> int:
        db = Database(Settings(database_url=url).async_database_url)
        try:
            async with db.engine.connect() as conn:
                rows = await conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid()"
                    ),
                    {"db": database},
                )
                return len(rows.fetchall())
        finally:
            await db.close()

    return f"pg_terminate_backend: {asyncio.run(cut())} connections to {database}"


INJECT: dict[str, Inject] = {
    "host": _kill_role("host"),
    "replica": _kill_role("gateway replica"),
    "redis": _kill_embedded_redis,
    "redis-restart": _restart_redis_server,
    "sql-cut": _cut_sql,
}


def applicable(target: Target, options: ChaosOptions) -> tuple[list[str], list[str]]:
    """The requested faults this target can take, and a note for each it cannot."""
    run: list[str] = []
    notes: list[str] = []
    for name in options.faults:
        if name not in INJECT:
            raise WarblerError(ErrorCode.VALIDATION, f"--faults: unknown fault {name!r}")
        why = None
        if name in ("host", "replica") and not target.role_pids:
            why = "no processes to kill"
        elif name == "redis" and (target.data_dir is None or _server is not None):
            why = "the cluster does not run the embedded Redis (a Redis URL was given)"
        elif name == "redis-restart" and _server is None:
            why = "no Redis server of the bench's own (--chaos-redis server)"
        elif name == "sql-cut" and not (options.database_url or "").startswith("postgresql"):
            why = "only on PostgreSQL (WARBLER_DATABASE_URL=postgresql://...)"
        if why is None:
            run.append(name)
        else:
            notes.append(f"{name}: skipped: {why}")
    return run, notes


# -- the scenario ------------------------------------------------------------------------------


@dataclass
class FaultRun:
    name: str
    did: str
    recovery_s: float
    late: int
    readyz_s: float | None
    run: PhaseOutcome
    # Where the recovery time goes: per half second of send time around the fault, the
    # longest delivery (ms). A tail that stays high after the dependency is back points at a
    # backlog or a retry backoff, not at the fault itself.
    profile: list[tuple[float, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        s = self.run.summary
        return {
            "fault": self.name,
            "did": self.did,
            "recovery_s": round(self.recovery_s, 3),
            "readyz_back_s": None if self.readyz_s is None else round(self.readyz_s, 2),
            "acked": s.acked,
            "lost": s.lost,
            "duplicated": s.duplicated,
            "unacked": s.unacked,
            "delivered_late": self.late,
            "max_delivery_ms": s.delivery.max_ms,
            "reconnects": sum(r.stats.reconnects for r in self.run.results),
            "errors": dict(s.errors),
            "delay_profile": [[t, ms] for t, ms in self.profile],
        }


def _readyz_back(base_url: str, since: float, budget_s: float) -> float | None:
    """Seconds from ``since`` until /readyz answers 200 (None if not within the budget)."""
    import httpx

    deadline = since + budget_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/readyz", timeout=2.0).status_code == 200:
                return time.monotonic() - since
        time.sleep(0.1)
    return None


def _one(pool: Pool, target: Target, options: ChaosOptions, name: str, phase: Phase) -> FaultRun:
    window = pool.cpu_window()
    window.start()
    start_at = pool.pool.start_phase(phase)
    time.sleep(max(0.0, start_at + FAULT_AT_S - time.time()))
    when_ns = time.time_ns()
    mono = time.monotonic()
    did = INJECT[name](target, options)
    logger.warning("chaos: %s", did)
    time.sleep(0.3)  # let the fault land before asking whether it is over
    readyz_s = _readyz_back(target.base_url, mono, options.recovery_after_s)
    run = outcome(pool.pool.collect(phase), window.stop())
    end_ns = int((start_at + phase.duration_s) * NS_PER_S)
    timeline = run.ledger.timeline or []
    late = sum(1 for sent, got in timeline if got - sent > LATE_S * NS_PER_S)
    profile = delay_profile(timeline, when_ns)
    logger.warning("chaos: %s: longest delivery (ms) by send time from the fault: %s", name,
                   " ".join(f"{t:+.1f}s:{ms:.0f}" for t, ms in profile))
    return FaultRun(
        name, did, recovery_s(timeline, when_ns, end_ns), late, readyz_s, run, profile
    )


def delay_profile(
    timeline: list[tuple[int, int]], fault_ns: int, before_s: float = 1.0, after_s: float = 10.0
) -> list[tuple[float, float]]:
    """Per ``PROFILE_STEP_S`` of send time from ``before_s`` before the fault to ``after_s``
    after it: (bucket start in s from the fault, the longest delivery in ms)."""
    worst: dict[int, int] = {}
    for sent_ns, got_ns in timeline:
        rel = (sent_ns - fault_ns) / NS_PER_S
        if -before_s <= rel < after_s:
            b = math.floor(rel / PROFILE_STEP_S)
            worst[b] = max(worst.get(b, 0), got_ns - sent_ns)
    return [(b * PROFILE_STEP_S, round(ns / 1e6, 1)) for b, ns in sorted(worst.items())]


def measure(target: Target, options: BenchOptions) -> tuple[Figures, list[str]]:
    """Steady load; one phase per fault; what each fault cost."""
    opts = chaos_options(options)
    names, notes = applicable(target, opts)
    names.sort(key=FAULTS.index)
    if not names:
        raise WarblerError(ErrorCode.UNSUPPORTED, f"no fault applies: {'; '.join(notes)}")
    pair_options = replace(opts, pairs=opts.recovery_pairs)
    plans = [replace(p, resume=True) for p in direct.plans(target, pair_options, _run_id())]
    rate_per_flow = opts.chaos_rate / opts.recovery_pairs
    phase = Phase(duration_s=FAULT_AT_S + opts.recovery_after_s, rate_per_flow=rate_per_flow,
                  timeline=True, drain_s=30.0, quiet_s=2.0, body_bytes=opts.body_bytes)
    with generator(target, plans, ready_s=120) as pool:
        pool.require_all_connected(2 * opts.recovery_pairs)
        pool.run(Phase(duration_s=opts.warmup_s, rate_per_flow=rate_per_flow, drain_s=5))
        runs = [_one(pool, target, opts, name, phase) for name in names]
    summaries = [r.run.summary for r in runs]
    figures = Figures(
        delivered_per_s=sum(s.delivered for s in summaries) / sum(s.window_s for s in summaries),
        p50_ms=summaries[-1].delivery.p50_ms,
        p99_ms=summaries[-1].delivery.p99_ms,
        lost=sum(s.lost for s in summaries),
        duplicated=sum(s.duplicated for s in summaries),
        extra={
            "faults": [r.to_json() for r in runs],
            "recovery_s": max(r.recovery_s for r in runs),
            "acked": sum(s.acked for s in summaries),
            "unacked": sum(s.unacked for s in summaries),
            "delivered_late": sum(r.late for r in runs),
        },
    )
    return figures, notes


def _run_id() -> str:
    from loadtest.scenarios.common import new_run_id

    return new_run_id()


def result(
    warbler: Figures | None, baseline: Figures | None, limits: list[str], options: BenchOptions
) -> ScenarioResult:
    """Per-fault figures, targets and the table (the relay has nothing to recover)."""
    opts = chaos_options(options)
    out = ScenarioResult(
        scenario="chaos",
        warbler=warbler,
        baseline=None,
        limits=[*limits, "baseline: the relay keeps no state to recover; no comparison"],
        ratio_of="recovery_s",
        params={"pairs": opts.recovery_pairs, "rate_per_s": opts.chaos_rate,
                "fault_at_s": FAULT_AT_S, "after_s": opts.recovery_after_s,
                "faults": opts.faults, "chaos_redis": opts.chaos_redis,
                "redis_down_s": opts.redis_down_s, "late_s": LATE_S},
    )
    faults: list[dict[str, object]] = list((warbler.extra.get("faults") if warbler else None) or [])
    for f in faults:
        name = str(f["fault"])
        out.checks += [
            Check(f"{name} recovery_s", _num(f["recovery_s"]), "<", MAX_RECOVERY_S),
            Check(f"{name} lost", _num(f["lost"]), "==", 0),
            Check(f"{name} duplicated", _num(f["duplicated"]), "==", 0),
            Check(f"{name} unacked", _num(f["unacked"]), "==", 0),
        ]
        out.rows.append((
            f"{name}: recovery s / acked / lost / dup / unacked / late / readyz s",
            " / ".join([
                fmt(_num(f["recovery_s"]), digits=2), fmt(_num(f["acked"])),
                fmt(_num(f["lost"])), fmt(_num(f["duplicated"])), fmt(_num(f["unacked"])),
                fmt(_num(f["delivered_late"])), fmt(_num(f["readyz_back_s"]), digits=2),
            ]),
            "-",
        ))
    return out


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
