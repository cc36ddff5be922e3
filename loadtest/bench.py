"""End-to-end benchmarks: ``python -m loadtest.bench <scenario>`` (or ``warbler bench``).

Each scenario runs against the baseline relay (started here, on this machine) and against
Warbler (a running cluster given with ``--host``, or one started here through ``warbler up``),
then prints a table and one JSON line. Progress goes to stderr; the table and the JSON to stdout.
Every loop is bounded in count and time, and only 127.0.0.1 is contacted.

Examples::

    python -m loadtest.bench direct --host http://127.0.0.1:8000
    python -m loadtest.bench group --members 100,1000
    python -m loadtest.bench all --baseline-only
    python -m loadtest.bench scale --rate 500 --surge 1000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from loadtest.generator import raise_fd_limit
from loadtest.report import Figures, ScenarioResult, json_line, render_table
from loadtest.scenarios import SCENARIOS, BenchOptions, Scenario, chaos
from loadtest.scenarios.scale import EVENT_AT_S, ScaleOptions
from loadtest.servers import Target, relay_target, warbler_cluster, warbler_target_at
from warbler.errors import ErrorCode, WarblerError

logger = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def parser() -> argparse.ArgumentParser:
    """The command line of the bench."""
    p = argparse.ArgumentParser(
        prog="python -m loadtest.bench", description="Warbler's end-to-end benchmarks."
    )
    p.add_argument("scenario", choices=[*SCENARIOS, "all"])
    p.add_argument("--host", help="a running Warbler cluster (http://127.0.0.1:PORT); "
                   "default: start one with `warbler up` and stop it after")
    p.add_argument("--data-dir", type=Path, default=Path(".warbler/bench"),
                   help="data dir of a cluster the bench starts (accounts persist there)")
    p.add_argument("--cluster-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for a cluster the bench starts (repeatable), e.g. "
                   "RAY_SERVE_HAPROXY_MAXCONN=30000 or WARBLER_GATEWAY_INITIAL_REPLICAS=1")
    p.add_argument("--token-cache", type=Path, default=None,
                   help="refresh-token cache for --host (default: <data-dir>/bench-accounts.json)")
    side = p.add_mutually_exclusive_group()
    side.add_argument("--baseline-only", action="store_true", help="measure only the relay")
    side.add_argument("--no-baseline", action="store_true", help="measure only Warbler")
    p.add_argument("--workers", type=int, default=2, help="load generator processes")
    p.add_argument("--duration", type=float, default=6.0, help="seconds per measured phase")
    p.add_argument("--pairs", type=int, default=100, help="direct: sender/receiver pairs")
    p.add_argument("--window", type=int, default=8, help="direct: messages in flight per sender")
    p.add_argument("--members", default="100,1000", help="group: sizes, comma-separated")
    p.add_argument("--group-window", type=int, default=16,
                   help="group: messages in flight from the sender")
    p.add_argument("--sockets", type=int, default=20_000, help="connections: sockets to open")
    p.add_argument("--missed", type=int, default=10_000, help="sync: messages missed")
    p.add_argument("--body-bytes", type=int, default=64, help="message body size")
    p.add_argument("--scale-pairs", type=int, default=50, help="scale: sender/receiver pairs")
    p.add_argument("--rate", type=float, default=500.0,
                   help="scale: open-loop msgs/s over all pairs")
    p.add_argument("--step", type=float, default=15.0,
                   help="scale: seconds of load per step (one scaling event each)")
    p.add_argument("--surge", type=int, default=1000,
                   help="scale: sockets opened at once while a replica is added")
    p.add_argument("--faults", default=",".join(chaos.FAULTS),
                   help="chaos: faults to inject, one phase each, comma-separated (those the "
                   "cluster cannot take are skipped with a note)")
    p.add_argument("--chaos-redis", choices=["embedded", "server"], default="embedded",
                   help="chaos: the cluster's Redis: embedded (kill -9 it) or a redis-server "
                   "the bench starts for it (restart it)")
    p.add_argument("--redis-down-s", type=float, default=1.0,
                   help="chaos: seconds the restarted Redis server stays down")
    p.add_argument("--chaos-rate", type=float, default=500.0,
                   help="chaos: open-loop msgs/s over all pairs")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="py-spy the hosts and gateway replicas during throughput phases; "
                   "raw stacks go to DIR, a summary to the report")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is not met")
    p.add_argument("--metrics", choices=["on", "off", "compare"], default="on",
                   help="WARBLER_METRICS of the cluster the bench starts; compare: one cluster "
                        "with metrics on, then one with them off, in this run (no relay)")
    p.add_argument("--metrics-rounds", type=int, default=2, metavar="N",
                   help="compare: N pairs of clusters in ABBA order (on off, off on, ...), so "
                        "a drift over the run (the first cluster measured faster) cancels")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def options_from(args: argparse.Namespace) -> ScaleOptions:
    """BenchOptions from the parsed command line (bad values are refused)."""
    try:
        members = [int(m) for m in str(args.members).split(",") if m.strip()]
    except ValueError:
        raise WarblerError(
            ErrorCode.VALIDATION, f"--members: not integers: {args.members}"
        ) from None
    bad = [
        name for name, value, low in (
            ("--workers", args.workers, 1), ("--pairs", args.pairs, 1),
            ("--window", args.window, 1), ("--group-window", args.group_window, 1),
            ("--sockets", args.sockets, 1),
            ("--missed", args.missed, 1), ("--body-bytes", args.body_bytes, 20),
            ("--scale-pairs", args.scale_pairs, 1), ("--surge", args.surge, 1),
        ) if value < low
    ]
    if args.duration <= 0:
        bad.append("--duration")
    if args.rate <= 0:
        bad.append("--rate")
    if args.redis_down_s < 0:
        bad.append("--redis-down-s")
    if args.chaos_rate <= 0:
        bad.append("--chaos-rate")
    if args.step <= EVENT_AT_S + 1:
        bad.append(f"--step (> {EVENT_AT_S + 1:g})")
    if not members or min(members) < 2 or max(members) > 1000:
        bad.append("--members (each 2-1000)")
    if bad:
        raise WarblerError(ErrorCode.VALIDATION, f"out of range: {', '.join(bad)}")
    return chaos.ChaosOptions(
        faults=[f.strip() for f in str(args.faults).split(",") if f.strip()],
        chaos_redis=args.chaos_redis,
        redis_down_s=args.redis_down_s,
        chaos_rate=args.chaos_rate,
        database_url=_cluster_database_url(args),
        workers=args.workers,
        duration_s=args.duration,
        pairs=args.pairs,
        window=args.window,
        members=members,
        group_window=args.group_window,
        sockets=args.sockets,
        missed=args.missed,
        body_bytes=args.body_bytes,
        profile_dir=args.profile,
        scale_pairs=args.scale_pairs,
        scale_rate=args.rate,
        step_s=args.step,
        surge=args.surge,
    )


def _cluster_database_url(args: argparse.Namespace) -> str | None:
    for item in reversed(list[str](args.cluster_env)):
        key, _, value = item.partition("=")
        if key == "WARBLER_DATABASE_URL":
            return value
    found: str | None = os.environ.get("WARBLER_DATABASE_URL")
    return found


def scenario_names(args: argparse.Namespace) -> list[str]:
    """The scenarios to run: the one named, or every one `all` includes."""
    if args.scenario == "all":
        return [name for name, scenario in SCENARIOS.items() if scenario.in_all]
    return [args.scenario]


def cluster_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment of a cluster the bench starts: what the chosen scenarios need, then
    the --cluster-env pairs (checked before anything starts)."""
    extra: dict[str, str] = {}
    for name in scenario_names(args):
        extra.update(SCENARIOS[name].cluster_env)
    for item in args.cluster_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise WarblerError(ErrorCode.VALIDATION, f"--cluster-env wants KEY=VALUE, got {item!r}")
        extra[key] = value
    if getattr(args, "metrics", "on") == "off":
        extra["WARBLER_METRICS"] = "false"
    return extra


@contextlib.contextmanager
def warbler(args: argparse.Namespace) -> Iterator[Target]:
    """The Warbler side: the cluster at --host, or one started (and stopped) here."""
    if args.host:
        host = urlsplit(args.host).hostname
        if host not in LOOPBACK:
            raise WarblerError(ErrorCode.VALIDATION, "--host must be on 127.0.0.1 (loopback)")
        cache = args.token_cache or args.data_dir / "bench-accounts.json"
        target = warbler_target_at(args.host, cache)
        # The data dir `warbler up` ran with, if it is this cluster's (the scale scenario
        # joins the cluster's Ray through its state file).
        target.data_dir = args.data_dir.resolve()
        yield target
        return
    with contextlib.ExitStack() as stack:
        env = cluster_env(args)
        if "chaos" in scenario_names(args) and args.chaos_redis == "server":
            env["WARBLER_REDIS_URL"] = stack.enter_context(chaos.redis_server())
        target = stack.enter_context(warbler_cluster(args.data_dir.resolve(), env))
        yield target


def _measure(
    name: str, scenario: Scenario, target: Target, options: BenchOptions
) -> tuple[Figures | None, list[str]]:
    logger.info("%s: measuring %s", name, target.name)
    try:
        return scenario.measure(target, options)
    except WarblerError as exc:
        logger.error("%s on %s failed: %s %s", name, target.name, exc, exc.details or "")
        return None, [f"{target.name}: failed: {exc.code.value}: {exc.message}"]


def run(args: argparse.Namespace) -> list[ScenarioResult]:
    """Run the chosen scenarios; print each table and JSON line as it completes."""
    options = options_from(args)
    cluster_env(args)  # refuse a bad --cluster-env before minutes of baseline runs
    names = scenario_names(args)
    if args.metrics == "compare":
        return compare_metrics(args, names, options)
    results: list[ScenarioResult] = []
    baselines: dict[str, tuple[Figures | None, list[str]]] = {}
    if not args.no_baseline:
        for name in names:
            scenario = SCENARIOS[name]
            if scenario.baseline:
                with relay_target() as relay:
                    baselines[name] = _measure(name, scenario, relay, options)
    ours: dict[str, tuple[Figures | None, list[str]]] = {}
    if not args.baseline_only:
        with warbler(args) as target:
            for name in names:
                ours[name] = _measure(name, SCENARIOS[name], target, options)
    for name in names:
        warbler_figures, warbler_limits = ours.get(name, (None, ["warbler: not measured"]))
        base_figures, base_limits = baselines.get(name, (None, []))
        result = SCENARIOS[name].result(
            warbler_figures, base_figures, warbler_limits + base_limits, options
        )
        print(render_table(result))
        print(json_line(result), flush=True)
        results.append(result)
    return results


def compare_metrics(
    args: argparse.Namespace, names: list[str], options: ScaleOptions
) -> list[ScenarioResult]:
    """Each scenario on clusters with metrics on and off, ``--metrics-rounds`` pairs in ABBA
    order: the overhead of recording and exporting (docs/benchmarks.md, "Metrics overhead").
    Per pair, the ratio of delivered msgs/s per server core (on / off); their geometric mean
    is the figure (one cluster against another differs by more than the overhead measured)."""
    if args.host:
        raise WarblerError(ErrorCode.VALIDATION, "--metrics compare starts its own clusters")
    given = list(args.cluster_env)
    rounds = max(1, args.metrics_rounds)
    pairs: dict[str, list[dict[str, Figures | None]]] = {name: [] for name in names}
    for r in range(rounds):
        order = (("on", "true"), ("off", "false"))
        measured: dict[str, dict[str, Figures | None]] = {name: {} for name in names}
        for label, value in order if r % 2 == 0 else order[::-1]:
            args.cluster_env = [*given, f"WARBLER_METRICS={value}"]
            with warbler(args) as target:
                for name in names:
                    figures, _ = _measure(name, SCENARIOS[name], target, options)
                    measured[name][label] = figures
                    # As it comes: a cluster that fails to start later loses nothing measured.
                    print(f"round {r + 1} metrics {label}: {name}:",
                          figures and figures.to_json(), flush=True)
        for name in names:
            pairs[name].append(measured[name])
    args.cluster_env = given
    results = []
    for name in names:
        for r, pair in enumerate(pairs[name]):
            result = SCENARIOS[name].result(
                pair.get("on"), pair.get("off"),
                [f"round {r + 1}; baseline column: the same with metrics off"], options,
            )
            print(f"round {r + 1}, metrics on (warbler) vs off (baseline): {name}")
            print(render_table(result))
            print(json_line(result), flush=True)
            results.append(result)
        print(json.dumps(overhead_summary(name, pairs[name])), flush=True)
    return results


def _per_core(figures: Figures | None) -> float | None:
    cores = figures.extra.get("server_cores") if figures is not None else None
    if figures is None or figures.delivered_per_s is None or not cores:
        return None
    return figures.delivered_per_s / float(cores)


def overhead_summary(name: str, pairs: list[dict[str, Figures | None]]) -> dict[str, object]:
    """The JSON line of a metrics comparison: per pair the per-core ratio on / off, their
    median and geometric mean, and the overhead the median means (1 - ratio, in percent).
    The median, because one pair disturbed by something else on the machine moves a mean
    far (seen: 1.25, 0.93, 0.94, 0.94)."""
    ratios = []
    for pair in pairs:
        on, off = _per_core(pair.get("on")), _per_core(pair.get("off"))
        if on is not None and off is not None and off > 0:
            ratios.append(on / off)
    geomean = math.exp(sum(math.log(x) for x in ratios) / len(ratios)) if ratios else None
    median = statistics.median(ratios) if ratios else None
    return {
        "scenario": f"{name}_metrics_overhead",
        "per_core_ratios": [round(x, 4) for x in ratios],
        "ratio_median": None if median is None else round(median, 4),
        "ratio_geomean": None if geomean is None else round(geomean, 4),
        "overhead_pct": None if median is None else round(100 * (1 - median), 2),
        "pairs": len(pairs),
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per HTTP request would drown the progress lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    raise_fd_limit()
    try:
        results = run(args)
    except WarblerError as exc:
        print(f"bench: {exc.code.value}: {exc.message}", file=sys.stderr)
        return 2
    if args.strict and not all(r.target_met for r in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
