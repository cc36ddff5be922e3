"""`sync`: a device that missed M messages (M = 10,000) reconnects: time until it is caught up.

User B sends M messages into the direct conversation with user A while A has no device online.
Then A's device connects with its cursor (the conversation's last seq before B started): the
time from opening the socket to `sync_done`, with all M messages received in order, exactly once.
Target: < 1 s for 10,000 messages.
"""

from __future__ import annotations

import asyncio
import logging
import os

from loadtest.accounts import last_seq, open_directs
from loadtest.generator import DeviceSpec, FlowSpec, Phase, WorkerPlan
from loadtest.report import Check, Figures, ScenarioResult, fmt
from loadtest.scenarios.common import (
    BenchOptions,
    bench_accounts,
    generator,
    limit_note,
    new_run_id,
    user_names,
)
from loadtest.servers import Target

logger = logging.getLogger(__name__)

MAX_CAUGHT_UP_S = 1.0
SEND_WINDOW = 64
RECEIVER = "away"


def measure(target: Target, options: BenchOptions) -> tuple[Figures, list[str]]:
    """Fill the backlog, then time the catch-up."""
    run_id = new_run_id()
    away, sender = bench_accounts(target, user_names("sync", 2), options)
    conv = asyncio.run(open_directs(target.base_url, [(sender, away)]))[0]
    cursor = asyncio.run(last_seq(target.base_url, away, conv))
    plan = WorkerPlan(
        index=0,
        ws_url=target.ws_url,
        run_id=run_id,
        devices=[
            DeviceSpec("sender", sender.user_id, sender.access_token, f"y-{run_id}-s", 1),
            DeviceSpec(RECEIVER, away.user_id, away.access_token, f"y-{run_id}-a",
                       cursors={conv: cursor}, deferred=True),
        ],
        flows=[FlowSpec("sender", expected=1, conversation_id=conv)],
        connect_timeout_s=120.0,
    )
    with generator(target, [plan], ready_s=60) as pool:
        pool.require_all_connected(1)
        backlog = pool.run(Phase(duration_s=300, window=SEND_WINDOW, drain_s=10,
                                 max_messages_per_flow=options.missed,
                                 body_bytes=options.body_bytes))
        # No sends now (a quota of 0): only the away device connects and catches up.
        catch_up = pool.run(Phase(duration_s=0, connect_deferred=True, reset_ledger=False,
                                  max_messages_per_flow=0, drain_s=10, quiet_s=0.5))
    summary = catch_up.summary
    caught_up_s = catch_up.results[0].connect_s.get(RECEIVER)
    figures = Figures(
        delivered_per_s=(summary.delivered / caught_up_s) if caught_up_s else None,
        lost=summary.lost,
        duplicated=summary.duplicated,
        extra={
            "caught_up_s": caught_up_s,
            "missed": options.missed,
            "received": summary.delivered,
            "backlog_fill_msgs_per_s": backlog.summary.acked_per_s,
            "unacked": backlog.summary.unacked,
            "errors": summary.errors,
        },
    )
    cores = os.cpu_count() or 1
    limits = [limit_note(f"{target.name} catch-up", catch_up, cores)]
    return figures, limits


def result(
    warbler: Figures | None, baseline: Figures | None, limits: list[str], options: BenchOptions
) -> ScenarioResult:
    """Figures, targets and the table."""
    out = ScenarioResult(
        scenario="sync",
        warbler=warbler,
        baseline=baseline,
        limits=limits,
        ratio_of="delivered_per_s",
        params={"missed": options.missed},
    )
    if warbler is not None:
        out.checks = [
            Check("caught_up_s", warbler.extra.get("caught_up_s"), "<", MAX_CAUGHT_UP_S),
            Check("received", warbler.extra.get("received"), "==", options.missed),
            Check("lost", warbler.lost, "==", 0),
            Check("duplicated", warbler.duplicated, "==", 0),
        ]
    w, b = warbler or Figures(), baseline or Figures()
    out.rows = [
        ("missed messages", fmt(w.extra.get("missed")), fmt(b.extra.get("missed"))),
        ("time to caught up s", fmt(w.extra.get("caught_up_s"), digits=3),
         fmt(b.extra.get("caught_up_s"), digits=3)),
        ("catch-up msgs/s", fmt(w.delivered_per_s), fmt(b.delivered_per_s)),
        ("received", fmt(w.extra.get("received")), fmt(b.extra.get("received"))),
        ("lost / duplicated", f"{fmt(w.lost)} / {fmt(w.duplicated)}",
         f"{fmt(b.lost)} / {fmt(b.duplicated)}"),
        ("backlog fill msgs/s", fmt(w.extra.get("backlog_fill_msgs_per_s")),
         fmt(b.extra.get("backlog_fill_msgs_per_s"))),
    ]
    return out
