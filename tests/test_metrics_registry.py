"""warbler.metrics without Ray: declarations, bound children, histograms, exported names."""

from __future__ import annotations

import subprocess
import sys

import pytest

from warbler import metrics
from warbler.config import Settings


def test_names_are_unique_and_namespaced() -> None:
    names = [f.name for f in metrics.families()]
    assert len(names) == len(set(names))
    assert all(n.startswith("warbler_") and not n.endswith("_total") for n in names)
    # Labels stay low-cardinality: never an id.
    for family in metrics.families():
        assert not any(label.endswith("id") for label in family.labels), family.name


def test_exported_names_follow_rays_exporter() -> None:
    exported = metrics.exported_names()
    assert "ray_warbler_gateway_frames_in_total" in exported  # Ray appends _total
    assert "ray_warbler_gateway_sockets" in exported
    assert {
        "ray_warbler_gateway_ack_seconds_bucket",
        "ray_warbler_gateway_ack_seconds_sum",
        "ray_warbler_gateway_ack_seconds_count",
    } <= exported


def test_children_are_cached_per_label_set() -> None:
    counter = metrics.FRAMES_IN
    child = counter.child("typing")
    assert counter.child("typing") is child
    before = child.value
    child.inc()
    child.inc(2)
    assert child.value == before + 3
    with pytest.raises(ValueError):
        counter.child("a", "b")
    assert ({"type": "typing"}, child) in [(labels, c) for labels, c in counter.items()]


def test_histogram_buckets_are_upper_bounds() -> None:
    hist = metrics.Histogram("warbler_test_only_seconds", "test", (0.1, 1.0))
    try:
        child = hist.child()
        for value in (0.05, 0.1, 0.5, 1.0, 3.0):
            child.observe(value)
        # le semantics: a value equal to a bound is in that bucket.
        assert child.counts == [2, 2, 1]
        assert child.count == 5 and child.sum == pytest.approx(4.65)
    finally:
        metrics.REGISTRY.remove(hist)


def test_gauge_moves_both_ways() -> None:
    gauge = metrics.Gauge("warbler_test_only_gauge", "test")
    try:
        child = gauge.child()
        child.inc()
        child.inc()
        child.dec()
        assert child.value == 1
        child.set(7)
        assert child.value == 7
    finally:
        metrics.REGISTRY.remove(gauge)


def test_metrics_off_exports_nothing() -> None:
    assert metrics.configure(Settings(metrics=False)) is False


def test_importing_metrics_does_not_import_ray() -> None:
    # The SDK (client/) imports warbler/ on machines without Ray.
    code = "import sys, warbler.metrics, warbler.logs; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_bench_switches_metrics_off_for_the_cluster_it_starts() -> None:
    from loadtest.bench import cluster_env, parser, run

    assert cluster_env(parser().parse_args(["direct", "--metrics", "off"])) == {
        "WARBLER_METRICS": "false"
    }
    assert "WARBLER_METRICS" not in cluster_env(parser().parse_args(["direct"]))
    from warbler.errors import WarblerError

    with pytest.raises(WarblerError, match="starts its own clusters"):
        run(parser().parse_args(["direct", "--metrics", "compare", "--host", "http://127.0.0.1:1"]))
