"""`warbler status`: the cluster at a glance, from Ray's metrics endpoints and the actors.

Every Ray node exports Prometheus text at ``http://<node>:<MetricsExportPort>/metrics`` (the
port is in ``ray.nodes()``); ``scrape`` reads them all and sums a series over the processes
that report it. Rates (messages/s) and the p99 ack latency come from two scrapes: the
previous refresh with ``--watch``, or one taken ``--window`` seconds earlier (Ray reports
application metrics about every 10 s, so a shorter window mostly sees no change).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from warbler import metrics


@dataclass(frozen=True)
class Sample:
    """One exported value."""

    name: str
    labels: Mapping[str, str]
    value: float


@dataclass
class Scrape:
    """Every sample of every node's endpoint at one moment."""

    at: float
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def total(self, name: str, **labels: str) -> float:
        """The sum of ``name`` over every process (and every label not given)."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def names(self) -> set[str]:
        """Every series name present."""
        return {s.name for s in self.samples}

    def buckets(self, histogram: metrics.Histogram, **labels: str) -> dict[float, float]:
        """Cumulative bucket counts of a histogram (upper bound -> count), summed."""
        name = f"{metrics.PREFIX}{histogram.name}_bucket"
        out: dict[float, float] = {}
        for s in self.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                bound = float(s.labels["le"])  # "+Inf" parses as inf
                out[bound] = out.get(bound, 0.0) + s.value
        return out


def parse(text: str) -> list[Sample]:
    """Prometheus text exposition format -> samples."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        Sample(s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def metrics_urls() -> list[str]:
    """The metrics endpoint of every live Ray node (needs a connected Ray driver)."""
    import ray

    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return [
        f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
        for n in nodes
        if n.get("Alive") and n.get("MetricsExportPort")
    ]


def scrape(urls: Iterable[str], *, timeout_s: float = 5.0) -> Scrape:
    """Read every endpoint; an endpoint that fails is listed in ``errors``, not raised."""
    result = Scrape(at=time.time())
    with httpx.Client(timeout=timeout_s) as client:
        for url in urls:
            try:
                response = client.get(url)
                response.raise_for_status()
                result.samples.extend(parse(response.text))
            except (httpx.HTTPError, ValueError) as exc:
                result.errors.append(f"{url}: {exc!r}")
    return result


def quantile(q: float, before: Mapping[float, float], after: Mapping[float, float]) -> float | None:
    """The ``q`` quantile of the observations between two cumulative bucket readings (linear
    inside a bucket, as Prometheus's histogram_quantile); None without observations."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: its bound is what we know
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return lower


@dataclass
class ClusterStatus:
    """What `warbler status` shows."""

    at: float
    nodes: int
    hosts: dict[str, dict[str, Any] | None]
    replicas: dict[str, int]
    sockets: float
    msgs_per_s: float | None
    ack_p99_ms: float | None
    backlog: float
    decisions: list[dict[str, Any]]
    metrics_errors: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "nodes": self.nodes,
            "hosts": self.hosts,
            "replicas": self.replicas,
            "sockets": self.sockets,
            "msgs_per_s": self.msgs_per_s,
            "ack_p99_ms": self.ack_p99_ms,
            "backlog": self.backlog,
            "decisions": self.decisions,
            "metrics_errors": self.metrics_errors,
        }


SENDS = metrics.FRAMES_IN.exported


def summarize(
    now: Scrape,
    before: Scrape | None,
    *,
    nodes: int,
    hosts: dict[str, dict[str, Any] | None],
    replicas: dict[str, int],
    decisions: list[dict[str, Any]],
) -> ClusterStatus:
    """Combine a scrape (and an earlier one, for rates) with what the actors said."""
    rate = p99 = None
    if before is not None and now.at > before.at:
        sent = now.total(SENDS, type="send") - before.total(SENDS, type="send")
        rate = max(0.0, sent) / (now.at - before.at)
        value = quantile(
            0.99, before.buckets(metrics.ACK_SECONDS), now.buckets(metrics.ACK_SECONDS)
        )
        p99 = None if value is None else value * 1000.0
    return ClusterStatus(
        at=now.at,
        nodes=nodes,
        hosts=hosts,
        replicas=replicas,
        sockets=now.total(metrics.SOCKETS.exported),
        msgs_per_s=rate,
        ack_p99_ms=p99,
        backlog=now.total(metrics.BACKLOG.exported),
        decisions=decisions,
        metrics_errors=now.errors,
    )


def read_actors(settings: Any) -> tuple[int, dict[str, dict[str, Any] | None], dict[str, int]]:
    """Live nodes, each pool host's stats (None: no answer), gateway replicas by state."""
    import ray
    from ray import serve

    from actors import cluster

    listed: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    nodes = len([n for n in listed if n.get("Alive")])

    async def hosts() -> dict[str, dict[str, Any] | None]:
        shard_map = await cluster.current_map(settings)
        names = list(shard_map.hosts) if shard_map else []

        async def one(name: str) -> dict[str, Any] | None:
            try:
                stats: dict[str, Any] = await asyncio.wait_for(
                    cluster.get_host(settings, name).stats.remote(), timeout=5.0
                )
                return stats
            except Exception:
                return None

        return dict(zip(names, await asyncio.gather(*(one(n) for n in names)), strict=True))

    replicas: dict[str, int] = {}
    try:
        for app in serve.status().applications.values():
            for deployment in app.deployments.values():
                for state, count in deployment.replica_states.items():
                    replicas[str(state)] = replicas.get(str(state), 0) + int(count)
    except Exception:  # Serve not started on this cluster
        replicas = {}
    return nodes, asyncio.run(hosts()), replicas


def render(status: ClusterStatus) -> Any:
    """A rich renderable of the status."""
    from rich.console import Group
    from rich.table import Table

    def fmt(value: float | None, unit: str = "") -> str:
        return "-" if value is None else f"{value:,.1f}{unit}"

    summary = Table(title=time.strftime("Warbler %H:%M:%S", time.localtime(status.at)))
    for col in ("nodes", "hosts", "replicas", "sockets", "msgs/s", "p99 ack", "backlog"):
        summary.add_column(col, justify="right")
    summary.add_row(
        str(status.nodes),
        str(len(status.hosts)),
        " ".join(f"{k.lower()}:{v}" for k, v in sorted(status.replicas.items())) or "-",
        f"{status.sockets:,.0f}",
        fmt(status.msgs_per_s),
        fmt(status.ack_p99_ms, " ms"),
        f"{status.backlog:,.0f}",
    )
    hosts = Table(title="hosts")
    hosts.add_column("host", no_wrap=True)  # a wrapped name cannot be copied into a command
    for col in ("active", "backlog", "loop lag ms", "batches", "appended"):
        hosts.add_column(col, justify="right")
    for name, stats in sorted(status.hosts.items()):
        if stats is None:
            hosts.add_row(name, "no answer", "", "", "", "")
            continue
        hosts.add_row(
            name,
            str(stats.get("active", "")),
            str(stats.get("backlog", "")),
            str(stats.get("loop_lag_ms", "")),
            str(stats.get("batches", "")),
            str(stats.get("writer_appended", "")),
        )
    decisions = Table(title="last autoscaler decisions")
    for col in ("time", "action", "change", "reason"):
        decisions.add_column(col)
    for entry in status.decisions[-5:]:
        added, removed = entry["added"], entry["removed"]
        change = " ".join([*(f"+{h}" for h in added), *(f"-{h}" for h in removed)])
        decisions.add_row(
            time.strftime("%H:%M:%S", time.localtime(entry["t"])),
            entry["action"],
            change,
            entry["reason"],
        )
    parts: list[Any] = [summary, hosts, decisions]
    if status.metrics_errors:
        parts.append("metrics endpoints failing: " + "; ".join(status.metrics_errors))
    return Group(*parts)


__all__ = [
    "ClusterStatus",
    "Sample",
    "Scrape",
    "metrics_urls",
    "parse",
    "quantile",
    "read_actors",
    "render",
    "scrape",
    "summarize",
]
