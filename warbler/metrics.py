"""Every Warbler metric, declared once: names, help, labels, buckets.

Recording is local and cheap: a bound child (``FRAMES_IN.child("send")``, built once and kept)
is a slotted object whose ``inc`` adds to an int, and a histogram child bumps one bucket. One
daemon thread per process (started by ``configure``) pushes the totals into Ray's metrics API
every ``metrics_flush_s``, from where Ray's per-node Prometheus endpoint exports them. Why not
call Ray on every event: one ``Counter.inc`` or ``Histogram.observe`` of ``ray.util.metrics``
costs ~12-13 us (measured, Ray 2.60), which at a few increments per frame is several percent of
a replica's CPU; a local increment is ~0.1 us.

Exported names (what Prometheus and the dashboard see) carry Ray's ``ray_`` prefix, and Ray
appends ``_total`` to counters: ``exported_names()`` lists them. Histograms are aggregated here
and exported in Prometheus's own layout (``<name>_bucket{le=...}``, ``_sum``, ``_count``) as
Ray gauges holding the cumulative values, so ``histogram_quantile`` over ``rate()`` works.

Ray is imported only by the flusher: the SDK (``client/``) imports ``warbler`` without Ray.
Labels are low-cardinality by design (frame types, error codes, entity kinds), never ids.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from warbler.config import Settings

logger = logging.getLogger(__name__)

PREFIX = "ray_"  # what Ray's exporter puts before every application metric

# Latency buckets in seconds: a local ack is ~1-20 ms, a bad tail is seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Batch sizes (envelopes per host call, messages per group commit).
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class CounterChild:
    """One label set of a counter: ``inc`` only adds to an int."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class GaugeChild:
    """One label set of a gauge."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class HistogramChild:
    """One label set of a histogram: a bucket count, a sum and a count."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


_C = TypeVar("_C", CounterChild, GaugeChild, HistogramChild)


class _Family(Generic[_C]):
    kind = ""

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name = name
        self.help = help
        self.labels = labels
        self._children: dict[tuple[str, ...], _C] = {}
        REGISTRY.append(self)

    def child(self, *values: str) -> _C:
        """The child of one label set, made once (keep it, or look it up: one dict get)."""
        found = self._children.get(values)
        if found is None:
            if len(values) != len(self.labels):
                raise ValueError(f"{self.name} takes labels {self.labels}, got {values}")
            found = self._children[values] = self._new()
        return found

    def _new(self) -> _C:
        raise NotImplementedError

    @property
    def exported(self) -> str:
        """The series name Prometheus sees (a histogram: its ``_bucket`` series)."""
        return f"{PREFIX}{self.name}"

    def items(self) -> list[tuple[dict[str, str], _C]]:
        """Every child with its labels (a copy: the flusher runs in another thread)."""
        return [
            (dict(zip(self.labels, key, strict=True)), child)
            for key, child in list(self._children.items())
        ]


class Counter(_Family[CounterChild]):
    """A monotonic count (exported as ``ray_<name>_total``)."""

    kind = "counter"

    def _new(self) -> CounterChild:
        return CounterChild()

    def items_by_value(self) -> list[tuple[str, float]]:
        """(first label value, count) of every child (a single-label counter's totals)."""
        return [(key[0] if key else "", child.value) for key, child in list(self._children.items())]

    @property
    def exported(self) -> str:
        return f"{PREFIX}{self.name}_total"


class Gauge(_Family[GaugeChild]):
    """A value that goes up and down (exported as ``ray_<name>``)."""

    kind = "gauge"

    def _new(self) -> GaugeChild:
        return GaugeChild()


class Histogram(_Family[HistogramChild]):
    """A distribution (exported as ``ray_<name>_bucket`` / ``_sum`` / ``_count``)."""

    kind = "histogram"

    def __init__(
        self, name: str, help: str, buckets: Iterable[float], labels: tuple[str, ...] = ()
    ) -> None:
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(buckets))

    def _new(self) -> HistogramChild:
        return HistogramChild(self.buckets)

    @property
    def exported(self) -> str:
        return f"{PREFIX}{self.name}_bucket"


REGISTRY: list[_Family[Any]] = []

# -- gateway -----------------------------------------------------------------------------------
SOCKETS = Gauge("warbler_gateway_sockets", "Open WebSockets (after hello) on the replica.")
FRAMES_IN = Counter("warbler_gateway_frames_in", "Client frames received, by type.", ("type",))
FRAMES_OUT = Counter(
    "warbler_gateway_frames_out", "Frames sent to sockets, by type (replies and pushes).", ("type",)
)
HELLO_SECONDS = Histogram(
    "warbler_gateway_hello_seconds", "Socket accept to hello_ok queued.", LATENCY_BUCKETS
)
ACK_SECONDS = Histogram(
    "warbler_gateway_ack_seconds",
    "A send frame's arrival to its ack (stored and committed in SQL).",
    LATENCY_BUCKETS,
)
RATE_LIMITED = Counter("warbler_gateway_rate_limited", "Sends rejected by the rate limit.")
ERRORS = Counter(
    "warbler_gateway_errors",
    "Errors answered (WS error frames and HTTP problems), by code.",
    ("code",),
)
CALL_BATCH = Histogram(
    "warbler_gateway_call_batch_size", "Entity calls per host call from a replica.", SIZE_BUCKETS
)

# -- delivery ----------------------------------------------------------------------------------
BUS_EVENTS = Counter("warbler_delivery_events", "Pub/sub events received by a replica.")
DELIVERIES = Counter(
    "warbler_delivery_frames", "Frames fanned out to local sockets from pub/sub events."
)
PUBSUB_LAG = Histogram(
    "warbler_delivery_lag_seconds",
    "A message's commit (created_at) to its arrival on a replica's pub/sub.",
    LATENCY_BUCKETS,
)
GAP_FILLS = Counter(
    "warbler_delivery_gap_fills", "Gaps in the live stream filled from the log (pub/sub lost one)."
)

# -- actors (host processes) -------------------------------------------------------------------
ACTIVE = Gauge("warbler_actor_active", "Active virtual actors on the host, by kind.", ("kind",))
ACTIVATIONS = Counter("warbler_actor_activations", "Entities activated, by kind.", ("kind",))
PASSIVATIONS = Counter("warbler_actor_passivations", "Entities passivated, by kind.", ("kind",))
BACKLOG = Gauge("warbler_actor_backlog", "Messages accepted by the host and not yet answered.")
LOOP_LAG = Gauge("warbler_actor_loop_lag_seconds", "How late the host's upkeep tick woke up.")
HOST_BATCH = Histogram(
    "warbler_actor_batch_size", "Envelopes per batch a host received.", SIZE_BUCKETS
)
MOVED = Counter(
    "warbler_actor_moved", "Entities passivated because their shard moved to another host."
)

# -- storage -----------------------------------------------------------------------------------
COMMIT_BATCH = Histogram(
    "warbler_storage_commit_batch_size", "Messages per group commit.", SIZE_BUCKETS
)
COMMIT_SECONDS = Histogram(
    "warbler_storage_commit_seconds", "Duration of one group commit (SQL).", LATENCY_BUCKETS
)
SQL_ERRORS = Counter("warbler_storage_sql_errors", "Failed SQL operations, by operation.", ("op",))
REDIS_SECONDS = Histogram(
    "warbler_storage_redis_seconds",
    "Redis round trips of the hosts, by operation.",
    LATENCY_BUCKETS,
    ("op",),
)

# -- autoscaler --------------------------------------------------------------------------------
DECISIONS = Counter(
    "warbler_autoscaler_decisions", "Host-pool autoscaler decisions, by action.", ("action",)
)
FAILOVERS = Counter(
    "warbler_host_failovers",
    "Dead pool hosts whose shards moved to the others (failover), and restarted ones given "
    "shards again (readmit).",
    ("action",),
)


_LAG = PUBSUB_LAG.child()


def observe_lag(created_at: object) -> None:
    """Observe now minus an event's ISO ``created_at`` (clocks of one cluster: NTP-close)."""
    if isinstance(created_at, str):
        try:
            stamp = datetime.fromisoformat(created_at).timestamp()
        except ValueError:
            return
        _LAG.observe(max(0.0, time.time() - stamp))


def families() -> list[_Family[Any]]:
    """Every declared metric."""
    return list(REGISTRY)


def exported_names() -> set[str]:
    """Every series name Prometheus sees (with Ray's prefix and suffixes)."""
    names: set[str] = set()
    for fam in REGISTRY:
        if isinstance(fam, Histogram):
            base = f"{PREFIX}{fam.name}"
            names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
        else:
            names.add(fam.exported)
    return names


# -- export ------------------------------------------------------------------------------------

# Called by the flusher before each push (e.g. a host sets its gauges from its counters).
_collectors: list[Callable[[], None]] = []
_flusher: _Flusher | None = None
_lock = threading.Lock()


def add_collector(collect: Callable[[], None]) -> None:
    """Run ``collect`` before every push (it reads state and sets gauges/counters). It runs
    in the flusher's thread: read only what is safe to read there (ints, ``len``)."""
    _collectors.append(collect)


def configure(settings: Settings) -> bool:
    """Start exporting this process's metrics through Ray (once; a no-op when
    ``settings.metrics`` is off or Ray is not initialized). True if exporting."""
    global _flusher
    if not settings.metrics:
        return False
    with _lock:
        if _flusher is None:
            try:
                import ray

                if not ray.is_initialized():
                    return False
            except ImportError:
                return False
            _flusher = _Flusher(settings.metrics_flush_s)
            _flusher.start()
    return True


def flush() -> None:
    """Push now (tests, and a process about to exit)."""
    if _flusher is not None:
        _flusher.push()


# How often every series is pushed, changed or not (see _Flusher.push).
FULL_PUSH_EVERY_S = 9.0


class _Flusher(threading.Thread):
    def __init__(self, interval_s: float) -> None:
        super().__init__(name="warbler-metrics", daemon=True)
        self._interval_s = max(0.1, interval_s)
        self._ray: dict[str, Any] = {}
        self._counted: dict[tuple[Any, ...], float] = {}  # counter totals pushed so far
        self._sent: dict[tuple[Any, ...], float] = {}  # gauge values pushed (cleared: re-push)
        self._push_lock = threading.Lock()
        self._full_at = 0.0

    def run(self) -> None:
        while True:
            time.sleep(self._interval_s)
            try:
                self.push()
            except Exception:
                logger.warning("pushing metrics to Ray failed", exc_info=True)

    def push(self) -> None:
        with self._push_lock:
            for collect in list(_collectors):
                try:
                    collect()
                except Exception:
                    logger.debug("a metrics collector failed", exc_info=True)
            now = time.monotonic()
            if now - self._full_at >= FULL_PUSH_EVERY_S:
                # Ray's agent drops a gauge not reported for two export intervals (20 s):
                # the unchanged ones are pushed again before that. (Counters are cumulative
                # in Ray and are kept.)
                self._full_at = now
                self._sent.clear()
            for fam in REGISTRY:
                for labels, child in fam.items():
                    self._push(fam, labels, child)

    def _metric(self, kind: str, name: str, help: str, tag_keys: tuple[str, ...]) -> Any:
        metric = self._ray.get(name)
        if metric is None:
            from ray.util import metrics as ray_metrics

            cls = ray_metrics.Counter if kind == "counter" else ray_metrics.Gauge
            metric = self._ray[name] = cls(name, description=help, tag_keys=tag_keys)
        return metric

    def _push(self, fam: _Family[Any], labels: dict[str, str], child: Any) -> None:
        # Only what moved since the last push (each Ray call costs ~12 us): an idle series costs
        # nothing between full pushes, and a histogram only its changed buckets.
        keys = fam.labels
        ident = (fam.name, tuple(labels.values()))
        if isinstance(child, CounterChild):
            value = child.value
            delta = value - self._counted.get(ident, 0.0)
            if delta > 0:  # Ray refuses inc(0): a counter appears at its first event
                self._metric("counter", fam.name, fam.help, keys).inc(delta, labels)
                self._counted[ident] = value
        elif isinstance(child, GaugeChild):
            if self._sent.get(ident) != child.value:
                self._metric("gauge", fam.name, fam.help, keys).set(child.value, labels)
                self._sent[ident] = child.value
        elif isinstance(child, HistogramChild):
            assert isinstance(fam, Histogram)
            counts = list(child.counts)
            total = sum(counts)
            if self._sent.get(ident) == total:
                return
            self._sent[ident] = total
            bucket = self._metric("gauge", f"{fam.name}_bucket", fam.help, (*keys, "le"))
            cumulative = 0
            for bound, n in zip((*fam.buckets, float("inf")), counts, strict=True):
                cumulative += n
                le = "+Inf" if bound == float("inf") else repr(float(bound))
                if self._sent.get((*ident, le)) != cumulative:
                    bucket.set(cumulative, {**labels, "le": le})
                    self._sent[(*ident, le)] = cumulative
            self._metric("gauge", f"{fam.name}_sum", fam.help, keys).set(child.sum, labels)
            self._metric("gauge", f"{fam.name}_count", fam.help, keys).set(cumulative, labels)


@contextlib.contextmanager
def timed(child: HistogramChild) -> Iterator[None]:
    """Observe the duration of a block (seconds) into ``child``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        child.observe(time.perf_counter() - started)


__all__ = [
    "Counter",
    "Gauge",
    "Histogram",
    "add_collector",
    "configure",
    "exported_names",
    "families",
    "flush",
    "timed",
]
