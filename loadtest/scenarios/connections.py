"""`connections`: how many idle sockets one node holds, and the memory each costs.

N sockets (default 20,000) of a few users (many devices each: a socket is a device) are opened
by several generator processes (each stays below its file-descriptor limit), with bounded
concurrency, a bounded failure count and a time budget. Once they are up, a sample is pinged to
prove they are alive end to end, and the server's resident memory growth over the idle baseline
is divided by the number of sockets. Target: >= 20,000 sockets at < 30 KB each.
"""

from __future__ import annotations

import logging
import math
import time

from loadtest.generator import DeviceSpec, WorkerPlan, split_round_robin
from loadtest.procstats import ProcessGroup
from loadtest.report import Check, Figures, ScenarioResult, fmt
from loadtest.scenarios.common import (
    BenchOptions,
    bench_accounts,
    generator,
    new_run_id,
    user_names,
)
from loadtest.servers import Target

logger = logging.getLogger(__name__)

MIN_SOCKETS = 20_000
MAX_BYTES_PER_SOCKET = 30 * 1024
PING_SAMPLE = 50
SETTLE_S = 3.0


def plans(target: Target, options: BenchOptions, run_id: str) -> list[WorkerPlan]:
    """Sockets dealt over enough workers that each stays within its fd limit."""
    accounts = bench_accounts(target, user_names("idle", options.idle_users), options)
    devices = [
        DeviceSpec(f"d{i}", a.user_id, a.access_token, f"i-{run_id}-{i}")
        for i in range(options.sockets)
        for a in [accounts[i % len(accounts)]]
    ]
    workers = max(options.workers, math.ceil(options.sockets / options.sockets_per_worker))
    return [
        WorkerPlan(
            index=w,
            ws_url=target.ws_url,
            run_id=run_id,
            devices=bucket,
            connect_concurrency=100,
            # A server at its socket cap leaves handshakes unanswered: give up on them soon.
            connect_timeout_s=10.0,
            max_connect_failures=200,
            connect_budget_s=options.connect_budget_s,
        )
        for w, bucket in enumerate(split_round_robin(devices, workers))
    ]


def measure(target: Target, options: BenchOptions) -> tuple[Figures, list[str]]:
    """Open, hold, ping, measure, close."""
    run_id = new_run_id()
    worker_plans = plans(target, options, run_id)
    server = ProcessGroup(target.server_pids())
    rss_before = server.rss_bytes()
    by_title_before = server.rss_by_title()
    started = time.perf_counter()
    with generator(target, worker_plans, ready_s=options.connect_budget_s + 60) as pool:
        connect_s = time.perf_counter() - started
        time.sleep(SETTLE_S)
        # Processes the server started while sockets arrived (a new replica) count too.
        server_now = ProcessGroup(target.server_pids())
        rss_after = server_now.rss_bytes()
        by_title_after = server_now.rss_by_title()
        answered, asked = pool.pool.ping(PING_SAMPLE)
        held = pool.connected
        errors: dict[str, int] = {}
        for report in pool.ready:
            for reason, n in report.errors.items():
                errors[reason] = errors.get(reason, 0) + n
    per_socket = (rss_after - rss_before) / held if held else None
    # Where the memory went: KB per socket by process title, largest first.
    growth = {
        title: (rss - by_title_before.get(title, 0)) / held / 1024
        for title, rss in by_title_after.items()
    } if held else {}
    growth_top = dict(sorted(growth.items(), key=lambda kv: -kv[1])[:5])
    figures = Figures(
        extra={
            "sockets": held,
            "bytes_per_socket": per_socket,
            "kb_per_socket": per_socket / 1024 if per_socket is not None else None,
            "asked": options.sockets,
            "connect_failures": pool.connect_failures,
            "connect_s": connect_s,
            "sockets_per_s": held / connect_s if connect_s > 0 else None,
            "ping_answered": answered,
            "ping_asked": asked,
            "server_rss_before_mb": rss_before / 2**20,
            "server_rss_after_mb": rss_after / 2**20,
            "server_processes": len(server_now.pids),
            "kb_per_socket_by_process": growth_top,
            "first_errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:3]),
        }
    )
    limits = [_limit(target.name, held, options, errors)]
    if growth_top:
        where = ", ".join(f"{title} {kb:.1f}" for title, kb in growth_top.items())
        limits.append(f"{target.name}: KB per socket by process: {where}")
    return figures, limits


def _limit(name: str, held: int, options: BenchOptions, errors: dict[str, int]) -> str:
    if held >= options.sockets:
        return f"{name}: the asked count ({options.sockets:,}) was reached; the node may hold more"
    top = next(iter(sorted(errors.items(), key=lambda kv: -kv[1])), None)
    why = f"first failure: {top[0]} (x{top[1]})" if top else "the time budget ran out"
    return f"{name}: stopped at {held:,} sockets; {why}"


def result(
    warbler: Figures | None, baseline: Figures | None, limits: list[str], options: BenchOptions
) -> ScenarioResult:
    """Figures, targets and the table."""
    out = ScenarioResult(
        scenario="connections",
        warbler=warbler,
        baseline=baseline,
        limits=limits,
        ratio_of="sockets",
        params={"sockets": options.sockets, "users": options.idle_users,
                "per_worker": options.sockets_per_worker},
    )
    if warbler is not None:
        out.checks = [
            Check("sockets", warbler.extra.get("sockets"), ">=", MIN_SOCKETS),
            Check("bytes_per_socket", warbler.extra.get("bytes_per_socket"), "<",
                  MAX_BYTES_PER_SOCKET),
        ]
    w, b = (warbler or Figures()).extra, (baseline or Figures()).extra
    out.rows = [
        ("idle sockets held", fmt(w.get("sockets")), fmt(b.get("sockets"))),
        ("KB per socket (server RSS growth)", fmt(w.get("kb_per_socket")),
         fmt(b.get("kb_per_socket"))),
        ("sockets opened per s", fmt(w.get("sockets_per_s")), fmt(b.get("sockets_per_s"))),
        ("connect failures", fmt(w.get("connect_failures")), fmt(b.get("connect_failures"))),
        ("pings answered (sample)", f"{fmt(w.get('ping_answered'))}/{fmt(w.get('ping_asked'))}",
         f"{fmt(b.get('ping_answered'))}/{fmt(b.get('ping_asked'))}"),
        ("server RSS MB before / after",
         f"{fmt(w.get('server_rss_before_mb'))} / {fmt(w.get('server_rss_after_mb'))}",
         f"{fmt(b.get('server_rss_before_mb'))} / {fmt(b.get('server_rss_after_mb'))}"),
    ]
    return out
