"""`python -m loadtest.bench` end to end against the relay: the table and the JSON line."""

from __future__ import annotations

import json
import subprocess
import sys


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadtest.bench", *args],
        capture_output=True, text=True, timeout=240, check=False,
    )


def test_sync_on_the_relay_prints_a_table_and_one_json_line() -> None:
    done = bench("sync", "--baseline-only", "--missed", "300")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "== sync"
    report = json.loads(lines[-1])
    for key in ("scenario", "delivered_per_s", "p50_ms", "p99_ms", "lost", "duplicated",
                "baseline", "ratio", "target_met"):
        assert key in report
    assert report["scenario"] == "sync"
    assert report["baseline"]["received"] == 300
    assert report["baseline"]["lost"] == 0 and report["baseline"]["duplicated"] == 0
    assert report["target_met"] is False  # Warbler was not measured
    assert sum(1 for line in lines if line.startswith("{")) == 1


def test_bad_options_are_refused_with_a_clear_message() -> None:
    done = bench("group", "--baseline-only", "--members", "5000")
    assert done.returncode == 2
    assert "--members" in done.stderr


def test_warbler_bench_is_registered_and_passes_options_through() -> None:
    from typer.testing import CliRunner

    from warbler.cli import app

    done = CliRunner().invoke(app, ["bench", "nope"])
    assert done.exit_code == 2
    assert "invalid choice: 'nope'" in done.output  # the bench's own parser answered


def test_the_metrics_overhead_is_the_median_of_per_core_ratios() -> None:
    from loadtest.bench import overhead_summary
    from loadtest.report import Figures

    def fig(rate: float, cores: float) -> Figures:
        return Figures(delivered_per_s=rate, extra={"server_cores": cores})

    # ABBA: the first cluster of each pair ran faster; the ratios straddle 1.
    pairs: list[dict[str, Figures | None]] = [
        {"on": fig(2200, 1.1), "off": fig(2000, 1.0)},  # 2000 vs 2000 per core
        {"on": fig(1800, 1.0), "off": fig(2000, 1.0)},  # 0.9
        {"on": fig(1900, 1.0), "off": fig(2000, 1.0)},  # 0.95
        {"on": fig(1000, 1.0), "off": None},  # a cluster that did not start: left out
    ]
    summary = overhead_summary("direct", pairs)
    assert summary["per_core_ratios"] == [1.0, 0.9, 0.95]
    assert summary["ratio_median"] == 0.95
    assert summary["ratio_geomean"] == round((0.9 * 0.95) ** (1 / 3), 4)
    assert summary["overhead_pct"] == 5.0
    assert summary["pairs"] == 4
