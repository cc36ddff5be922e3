"""A focused hello surge: N sockets opened at once against one running target, time to hello_ok.

    python -m loadtest.hello_surge --host http://127.0.0.1:PORT --cache DIR/bench-accounts.json \
        [--sockets 1000] [--users 100] [--runs 3] [--warm] [--no-baseline]

Each run starts a fresh generator process whose ``--sockets`` devices (``--users`` bench users,
round robin) all connect at one instant; the figure is each device's time from opening its
socket to hello_ok (the generator process opening them is part of it, on both sides). The
relay baseline (loadtest/baseline_relay.py) gets the same surge in the same invocation, runs
interleaved. The users each hold a few conversations (two directs and a group), created once,
so a hello does what it does for a real user. ``--warm``: one socket per user is held open
first (the users are already on the replica; the scale scenario's surge is like this), else
every run starts with no socket of those users on the replica. Prints one JSON line per run
and a summary (medians over the runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from loadtest.accounting import percentile
from loadtest.accounts import Account, create_group, open_directs, provision
from loadtest.generator import DeviceSpec, GeneratorPool, Phase, WorkerPlan
from loadtest.procstats import ProcessGroup
from loadtest.servers import Target, relay_target, warbler_target_at

logger = logging.getLogger(__name__)

GROUP_SIZE = 20


def _accounts(target: Target, users: int) -> list[Account]:
    names = [f"surge{i:05d}" for i in range(users)]
    return asyncio.run(provision(target.base_url, names, cache=target.cache, concurrency=8))


def _conversations(target: Target, accounts: list[Account], marker: Path | None) -> None:
    """Two directs (i with i+1 and i+2) and one group of GROUP_SIZE per user, made once."""
    if marker is not None and marker.exists():
        return
    n = len(accounts)
    pairs = [(accounts[i], accounts[(i + k) % n]) for k in (1, 2) for i in range(n)]

    async def make() -> None:
        await open_directs(target.base_url, pairs)
        for g in range(0, n, GROUP_SIZE):
            members = accounts[g : g + GROUP_SIZE]
            await create_group(target.base_url, members[0], members[1:], f"surge {g}")

    asyncio.run(make())
    if marker is not None:
        marker.write_text("done\n")


@contextmanager
def _held(target: Target, ws_url: str, accounts: list[Account], run_id: str) -> Iterator[None]:
    """One socket per user, open for the block's life (the --warm case)."""
    devices = [
        DeviceSpec(f"w{i}", a.user_id, a.access_token, f"w-{run_id}-{i}")
        for i, a in enumerate(accounts)
    ]
    plan = WorkerPlan(index=98, ws_url=ws_url, run_id=run_id, devices=devices,
                      connect_concurrency=32)
    with GeneratorPool([plan]) as pool:
        pool.wait_ready(120.0)
        yield


def surge_once(target: Target, ws_url: str, accounts: list[Account], sockets: int, run_id: str
               ) -> dict[str, Any]:
    """One surge: every device connects at once; hello_ok times in seconds."""
    devices = [
        DeviceSpec(f"s{i}", a.user_id, a.access_token, f"s-{run_id}-{i}", deferred=True)
        for i, a in ((i, accounts[i % len(accounts)]) for i in range(sockets))
    ]
    plan = WorkerPlan(index=99, ws_url=ws_url, run_id=run_id, devices=devices,
                      connect_concurrency=sockets, max_connect_failures=sockets,
                      connect_timeout_s=30.0)
    with GeneratorPool([plan]) as pool:
        pool.wait_ready(60.0)
        load = os.getloadavg()[0]
        server = ProcessGroup(target.server_pids())
        cpu0 = server.cpu_seconds()
        phase = Phase(duration_s=0.0, connect_deferred=True, drain_s=1.0, quiet_s=0.2)
        pool.start_phase(phase, lead_s=0.2)
        result = pool.collect(phase)[0]
        cpu1 = server.cpu_seconds()
    times = sorted(result.connect_s.values())
    # CPU seconds the server's processes spent from the surge's start to its drain, by title.
    names = server.names()
    cpu: dict[str, float] = {}
    for pid, after in cpu1.items():
        title = names.get(pid, str(pid))[:40]
        cpu[title] = round(cpu.get(title, 0.0) + after - cpu0.get(pid, after), 2)
    return {
        "target": target.name if ws_url == target.ws_url else "floor",
        "load_1m": round(load, 2),
        "connected": len(times),
        "failures": result.connect_failures,
        "p50_s": percentile(times, 50),
        "p99_s": percentile(times, 99),
        "max_s": times[-1] if times else None,
        "deciles_s": [round(percentile(times, q) or 0.0, 2) for q in range(10, 100, 10)],
        "errors": dict(list(result.connect_errors.items())[:3]),
        "server_cpu_s": {k: v for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]) if v >= 0.05},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--cache", type=Path, required=True, help="refresh-token cache file")
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pause", type=float, default=5.0, help="seconds between runs")
    parser.add_argument("--warm", action="store_true")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--ws-url", help="open the surge's sockets here instead (accounts still "
                        "come from --host): e.g. a bare app on the same ingress, for the floor")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    run_id = f"{int(time.time()) % 100000}"
    with ExitStack() as stack:
        targets = [warbler_target_at(args.host, args.cache)]
        if not args.no_baseline:
            targets.append(stack.enter_context(relay_target()))
        accounts: dict[str, list[Account]] = {}
        for t in targets:
            accounts[t.name] = _accounts(t, args.users)
            marker = args.cache.with_suffix(f".surge{args.users}") if t.name != "relay" else None
            _conversations(t, accounts[t.name], marker)
        runs: list[dict[str, Any]] = []
        for i in range(args.runs):
            for t in targets:
                with ExitStack() as warm:
                    ws_url = args.ws_url if args.ws_url and t.name != "relay" else t.ws_url
                    if args.warm:
                        warm.enter_context(_held(t, ws_url, accounts[t.name], f"{run_id}{i}"))
                    time.sleep(args.pause)
                    out = surge_once(t, ws_url, accounts[t.name], args.sockets, f"{run_id}{i}")
                print(json.dumps(out), flush=True)
                runs.append(out)
    summary: dict[str, Any] = {"sockets": args.sockets, "users": args.users, "warm": args.warm}
    for name in dict.fromkeys(r["target"] for r in runs):
        mine = [r for r in runs if r["target"] == name]
        summary[name] = {
            k: statistics.median(r[k] for r in mine if r[k] is not None)
            for k in ("p50_s", "p99_s", "max_s", "load_1m")
        }
    if "relay" in summary and "warbler" in summary:
        summary["ratio_p99"] = summary["warbler"]["p99_s"] / summary["relay"]["p99_s"]
    print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
    main()
