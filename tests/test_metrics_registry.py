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


class _Sink:
    """Stands in for one ``ray.util.metrics`` object: records each call Ray would get."""

    def __init__(self, calls: list[tuple[str, str, float, dict[str, str]]], name: str) -> None:
        self._calls, self._name = calls, name

    def inc(self, value: float, tags: dict[str, str]) -> None:
        self._calls.append(("inc", self._name, value, tags))

    def set(self, value: float, tags: dict[str, str]) -> None:
        self._calls.append(("set", self._name, value, tags))


def test_the_flusher_pushes_what_changed_and_everything_now_and_then(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, str, float, dict[str, str]]] = []
    flusher = metrics._Flusher(5.0)
    monkeypatch.setattr(flusher, "_metric", lambda kind, name, help, keys: _Sink(calls, name))
    monkeypatch.setattr(metrics, "REGISTRY", [])
    frames = metrics.Counter("warbler_test_frames", "test", ("type",))
    sockets = metrics.Gauge("warbler_test_sockets", "test")
    acks = metrics.Histogram("warbler_test_ack_seconds", "test", (0.01, 0.1))
    frames.child("send").inc(3)
    sockets.child().set(2)
    acks.child().observe(0.05)
    flusher.push()
    first = list(calls)
    assert ("inc", "warbler_test_frames", 3.0, {"type": "send"}) in first
    assert ("set", "warbler_test_sockets", 2.0, {}) in first
    assert ("set", "warbler_test_ack_seconds_count", 1, {}) in first
    calls.clear()
    flusher.push()
    assert calls == []  # nothing moved: no Ray call at all
    frames.child("send").inc()
    acks.child().observe(5.0)  # only the +Inf bucket moves
    flusher.push()
    assert ("inc", "warbler_test_frames", 1.0, {"type": "send"}) in calls
    buckets = [c for c in calls if c[1] == "warbler_test_ack_seconds_bucket"]
    assert buckets == [("set", "warbler_test_ack_seconds_bucket", 2, {"le": "+Inf"})]
    assert not any(c[1] == "warbler_test_sockets" for c in calls)
    calls.clear()
    # Past FULL_PUSH_EVERY_S every gauge is pushed again (Ray's agent drops stale gauges);
    # counters are not re-counted.
    flusher._full_at -= metrics.FULL_PUSH_EVERY_S
    flusher.push()
    assert ("set", "warbler_test_sockets", 2.0, {}) in calls
    assert len([c for c in calls if c[1] == "warbler_test_ack_seconds_bucket"]) == 3
    assert not any(c[0] == "inc" for c in calls)
