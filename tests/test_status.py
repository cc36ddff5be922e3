"""warbler.status: parsing Ray's exposition text, sums over processes, rates and quantiles."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from tests.support import GatewayInfo
from warbler import metrics
from warbler.config import Settings
from warbler.status import (
    Scrape,
    metrics_urls,
    parse,
    quantile,
    read_actors,
    render,
    scrape,
    summarize,
)

_TEXT = """\
# HELP ray_warbler_gateway_frames_in_total Client frames received, by type.
# TYPE ray_warbler_gateway_frames_in_total counter
ray_warbler_gateway_frames_in_total{{WorkerId="a",type="send"}} {a}
ray_warbler_gateway_frames_in_total{{WorkerId="b",type="send"}} {b}
ray_warbler_gateway_frames_in_total{{WorkerId="b",type="ping"}} 5.0
# TYPE ray_warbler_gateway_sockets gauge
ray_warbler_gateway_sockets{{WorkerId="a"}} 3.0
ray_warbler_gateway_sockets{{WorkerId="b"}} 4.0
# TYPE ray_warbler_gateway_ack_seconds_bucket gauge
ray_warbler_gateway_ack_seconds_bucket{{WorkerId="a",le="0.01"}} {fast}
ray_warbler_gateway_ack_seconds_bucket{{WorkerId="a",le="0.1"}} {mid}
ray_warbler_gateway_ack_seconds_bucket{{WorkerId="a",le="+Inf"}} {mid}
"""


def _scrape(at: float, a: float, b: float, fast: float, mid: float) -> Scrape:
    return Scrape(at=at, samples=parse(_TEXT.format(a=a, b=b, fast=fast, mid=mid)))


def test_totals_sum_processes_and_filter_labels() -> None:
    s = _scrape(0.0, 10, 20, 1, 2)
    assert s.total("ray_warbler_gateway_frames_in_total", type="send") == 30
    assert s.total("ray_warbler_gateway_frames_in_total") == 35
    assert s.total("ray_warbler_gateway_sockets") == 7
    assert s.total("missing") == 0
    assert s.buckets(metrics.ACK_SECONDS) == {0.01: 1, 0.1: 2, math.inf: 2}


def test_quantile_interpolates_inside_a_bucket() -> None:
    before = {0.01: 0.0, 0.1: 0.0, math.inf: 0.0}
    after = {0.01: 50.0, 0.1: 100.0, math.inf: 100.0}
    assert quantile(0.5, before, after) == 0.01
    assert quantile(0.99, before, after) == pytest.approx(0.01 + 0.09 * (49 / 50))
    assert quantile(0.99, after, after) is None  # nothing observed in between
    assert quantile(0.99, before, {0.01: 0.0, math.inf: 4.0}) == 0.01  # past the last bound


def test_summary_rates_between_two_scrapes() -> None:
    before = _scrape(100.0, 10, 20, 0, 0)
    now = _scrape(110.0, 60, 70, 90, 100)
    status = summarize(
        now, before, nodes=1, hosts={"h0": {"active": 3}}, replicas={"RUNNING": 2}, decisions=[]
    )
    assert status.msgs_per_s == 10.0  # (130 - 30) sends over 10 s
    assert status.sockets == 7
    assert status.ack_p99_ms is not None and 10.0 < status.ack_p99_ms < 100.0
    single = summarize(now, None, nodes=1, hosts={}, replicas={}, decisions=[])
    assert single.msgs_per_s is None and single.ack_p99_ms is None
    console = Console(record=True, width=120)
    console.print(render(status))
    text = console.export_text()
    assert "h0" in text and "running:2" in text and "10.0" in text


@pytest.mark.ray
def test_status_reads_the_session_cluster(
    gateway: GatewayInfo, hosts: list[Any], settings: Settings
) -> None:
    nodes, host_stats, replicas = read_actors(settings)
    assert nodes == 1
    assert len(host_stats) == len(hosts)
    assert all(stats is not None and stats["name"] in host_stats for stats in host_stats.values())
    assert replicas.get("RUNNING", 0) >= gateway.settings.gateway_initial_replicas
    now = scrape(metrics_urls())
    assert not now.errors and now.samples  # Ray's own series at least
    status = summarize(now, None, nodes=nodes, hosts=host_stats, replicas=replicas, decisions=[])
    assert json.loads(json.dumps(status.as_dict()))["nodes"] == 1
    console = Console(record=True, width=300)  # wide: no column is cut
    console.print(render(status))
    text = console.export_text()
    assert all(name in text for name in host_stats), (list(host_stats), text)


@pytest.mark.ray
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="no prometheus binary")
def test_local_prometheus_scrapes_every_node(
    gateway: GatewayInfo, settings: Settings, tmp_path: Path
) -> None:
    from serve.ingress import free_port
    from storage.redis import terminate_process
    from warbler import prometheus

    port = free_port()
    proc = prometheus.start(tmp_path, port=port)
    assert proc is not None
    try:
        deadline = time.monotonic() + 120
        found: list[Any] = []
        while time.monotonic() < deadline and not found:
            time.sleep(2)
            try:
                reply = httpx.get(
                    f"http://127.0.0.1:{port}/api/v1/query",
                    params={"query": metrics.SOCKETS.exported},
                    timeout=5,
                )
                found = reply.json()["data"]["result"]
            except (httpx.HTTPError, KeyError, ValueError):
                continue
        assert found, "Prometheus never scraped the node's Warbler metrics"
    finally:
        terminate_process(proc.pid, 10.0, what="prometheus")
