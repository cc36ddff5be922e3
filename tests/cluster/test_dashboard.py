"""The Grafana dashboard and the Prometheus config read what Warbler exports: every panel's
query names only metrics declared in warbler/metrics.py (under their exported names), and every
declared metric is on some panel."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from warbler import metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# A metric name in PromQL: ours all start with ray_warbler_.
_NAME = re.compile(r"\bray_warbler_[a-zA-Z0-9_]+\b")


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return [p for p in out if p.get("type") != "row"]


def test_every_panel_queries_exported_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "warbler-dashboard.json").read_text())
    exported = metrics.exported_names()
    used: set[str] = set()
    panels = _panels(dashboard)
    assert len(panels) >= 20
    for panel in panels:
        exprs = [t["expr"] for t in panel["targets"]]
        assert exprs, f"panel {panel['title']!r} has no query"
        for expr in exprs:
            names = set(_NAME.findall(expr))
            assert names, f"panel {panel['title']!r}: {expr!r} reads no Warbler metric"
            unknown = names - exported
            assert not unknown, f"panel {panel['title']!r} reads undeclared {sorted(unknown)}"
            used |= names
    # Each declared metric is shown (a histogram by any of its series).
    for family in metrics.families():
        series = {n for n in exported if n.startswith(f"{metrics.PREFIX}{family.name}")}
        assert series & used, f"{family.name} is on no panel"


def test_panel_ids_are_unique_and_fit_the_grid() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "warbler-dashboard.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24


def test_prometheus_config_reads_rays_service_discovery() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    [sd] = job["file_sd_configs"]
    assert sd["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
