"""The scale scenario's arithmetic: a per-second timeline and what each scaling event did.

Pure functions over what the bench recorded (no Ray, no clock), so they are unit-tested:

- `bucket_timeline`: sends, acks and deliveries (from a merged `Ledger`), polled host and
  replica counts and the scaling events, cut into one-second buckets from a common start;
- `first_handled_s` / `fair_share_s`: from polled host counters (``ActorHost.stats()``'s
  ``envelopes``), when a new host handled its first envelope and when it first carried its
  fair share of the pool's envelopes;
- `moved_conversations` and `move_impact`: which conversations a shard move touched and how
  long their messages waited while it ran.

Every time is wall-clock nanoseconds (``time.time_ns()``), as in `loadtest.accounting`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loadtest.accounting import NS_PER_MS, NS_PER_S, Ledger, percentile

if TYPE_CHECKING:
    # Importing `actors` imports Ray, which reads its auth settings once at import: the bench
    # sets them first (see `loadtest.scaling`).
    from actors.directory import ShardMap


@dataclass(frozen=True)
class PoolSample:
    """One poll of the cluster: pool hosts' cumulative envelope counts, running replicas."""

    at_ns: int
    envelopes: Mapping[str, int]  # host name -> envelopes handled since it started
    replicas: int | None = None

    @property
    def hosts(self) -> int:
        """Hosts that answered this poll."""
        return len(self.envelopes)


@dataclass(frozen=True)
class EventMark:
    """A scaling event on the timeline: when it began and ended (its call returned)."""

    label: str
    start_ns: int
    end_ns: int


@dataclass
class Bucket:
    """One second of the timeline (``second`` counted from the timeline's start)."""

    second: int
    sent: int = 0
    acked: int = 0
    delivered: int = 0
    ack_ms: list[float] = field(default_factory=list)
    hosts: int | None = None
    replicas: int | None = None
    events: list[str] = field(default_factory=list)

    @property
    def ack_p50_ms(self) -> float | None:
        """Median ack latency of the sends acked in this second."""
        return percentile(self.ack_ms, 50)

    @property
    def ack_p99_ms(self) -> float | None:
        """99th percentile ack latency of the sends acked in this second."""
        return percentile(self.ack_ms, 99)

    def to_json(self) -> dict[str, object]:
        """The bucket as a JSON object (latencies rounded to 0.1 ms)."""
        p50, p99 = self.ack_p50_ms, self.ack_p99_ms
        return {
            "t": self.second,
            "sent": self.sent,
            "acked": self.acked,
            "delivered": self.delivered,
            "ack_p50_ms": round(p50, 1) if p50 is not None else None,
            "ack_p99_ms": round(p99, 1) if p99 is not None else None,
            "hosts": self.hosts,
            "replicas": self.replicas,
            "events": self.events,
        }


def bucket_timeline(
    ledger: Ledger,
    samples: Iterable[PoolSample],
    events: Iterable[EventMark],
    start_ns: int,
    end_ns: int,
) -> list[Bucket]:
    """One bucket per second from ``start_ns`` up to ``end_ns``: sends by their send time,
    acks (and their latency) by their ack time, deliveries by their delivery time (the
    ledger's ``timeline`` must have been recorded), the last poll of hosts and replicas in the
    second (carried forward when a second has none), and the events that began in it."""
    n = max(1, -(-(end_ns - start_ns) // NS_PER_S))
    buckets = [Bucket(i) for i in range(n)]

    def at(ns: int) -> Bucket | None:
        i = (ns - start_ns) // NS_PER_S
        return buckets[i] if 0 <= i < n else None

    for record in ledger.sent.values():
        b = at(record.sent_ns)
        if b is not None:
            b.sent += 1
        if record.acked_ns is not None:
            b = at(record.acked_ns)
            if b is not None:
                b.acked += 1
                b.ack_ms.append((record.acked_ns - record.sent_ns) / NS_PER_MS)
    for _, delivered_ns in ledger.timeline or []:
        b = at(delivered_ns)
        if b is not None:
            b.delivered += 1
    for sample in sorted(samples, key=lambda s: s.at_ns):
        b = at(sample.at_ns)
        if b is not None:
            b.hosts = sample.hosts
            if sample.replicas is not None:
                b.replicas = sample.replicas
    for prev, cur in zip(buckets, buckets[1:], strict=False):
        if cur.hosts is None:
            cur.hosts = prev.hosts
        if cur.replicas is None:
            cur.replicas = prev.replicas
    for event in sorted(events, key=lambda e: e.start_ns):
        b = at(event.start_ns)
        if b is not None:
            b.events.append(event.label)
    return buckets


def _rates(samples: Sequence[PoolSample], window_ns: int) -> list[tuple[int, dict[str, float]]]:
    """Per poll, each host's envelopes per second over the trailing ``window_ns``."""
    out = []
    j = 0
    for i, cur in enumerate(samples):
        while j < i and cur.at_ns - samples[j + 1].at_ns >= window_ns:
            j += 1
        prev = samples[j]
        span = (cur.at_ns - prev.at_ns) / NS_PER_S
        if i == j or span <= 0:
            continue
        out.append((cur.at_ns, {
            host: (count - prev.envelopes.get(host, 0)) / span
            for host, count in cur.envelopes.items()
        }))
    return out


def first_handled_s(samples: Iterable[PoolSample], host: str, start_ns: int) -> float | None:
    """Seconds from ``start_ns`` to the first poll that saw ``host`` with an envelope handled
    (None if none did). The poll interval bounds its resolution."""
    for sample in sorted(samples, key=lambda s: s.at_ns):
        if sample.at_ns >= start_ns and sample.envelopes.get(host, 0) > 0:
            return (sample.at_ns - start_ns) / NS_PER_S
    return None


def fair_share_s(
    samples: Iterable[PoolSample],
    host: str,
    start_ns: int,
    *,
    share: float = 0.8,
    window_s: float = 1.0,
) -> float | None:
    """Seconds from ``start_ns`` until ``host`` first handled at least ``share`` of an equal
    split of the pool's envelopes (1/hosts of them), over a trailing ``window_s`` (None if it
    never did). An event with no traffic never reaches a share."""
    ordered = [s for s in sorted(samples, key=lambda s: s.at_ns) if s.at_ns >= start_ns]
    for at_ns, rates in _rates(ordered, int(window_s * NS_PER_S)):
        total = sum(max(0.0, r) for r in rates.values())
        if host in rates and total > 0 and rates[host] >= share * total / len(rates):
            return (at_ns - start_ns) / NS_PER_S
    return None


def moved_conversations(
    before: ShardMap, after: ShardMap, members: Mapping[int, Sequence[int]]
) -> set[int]:
    """Conversations a move touched: the conversation's own entity, or the session of one of
    its members (the sender's session handles its sends), changed host."""
    from actors.names import conv_key, user_key

    def moved(key: str) -> bool:
        return before.owner(key) != after.owner(key)

    return {
        conv for conv, users in members.items()
        if moved(conv_key(conv)) or any(moved(user_key(u)) for u in users)
    }


@dataclass(frozen=True)
class MoveImpact:
    """How a shard move looked to the messages of the conversations it moved."""

    conversations: int  # moved conversations with traffic in the bench
    in_flight: int  # their messages sent before the move ended and acked after it began
    max_ack_ms: float | None  # the slowest of those acks
    unavailable_s: float  # longest wait counted from the move's start (recovery_s-style)
    unacked: int  # their messages sent during the move and never acked


def move_impact(ledger: Ledger, conversations: set[int], event: EventMark) -> MoveImpact:
    """Acks of the moved conversations' messages that overlapped the move."""
    worst_ms: float | None = None
    worst_wait = 0
    overlapping = unacked = 0
    for record in ledger.sent.values():
        if record.conversation_id not in conversations or record.sent_ns > event.end_ns:
            continue
        if record.acked_ns is None:
            if record.sent_ns >= event.start_ns:
                unacked += 1
            continue
        if record.acked_ns < event.start_ns:
            continue
        overlapping += 1
        ms = (record.acked_ns - record.sent_ns) / NS_PER_MS
        worst_ms = ms if worst_ms is None else max(worst_ms, ms)
        worst_wait = max(worst_wait, record.acked_ns - max(record.sent_ns, event.start_ns))
    return MoveImpact(len(conversations), overlapping, worst_ms, worst_wait / NS_PER_S, unacked)


def lost_by_second(ledger: Ledger, start_ns: int) -> dict[int, int]:
    """Lost deliveries (acked, not every expected device got it) by the second of the send."""
    out: dict[int, int] = {}
    for cmid, record in ledger.sent.items():
        if record.seq is None:
            continue
        reach = ledger.reach.get(cmid)
        missing = record.expected - (reach.receivers if reach is not None else 0)
        if missing > 0:
            second = (record.sent_ns - start_ns) // NS_PER_S
            out[second] = out.get(second, 0) + missing
    return out


def render_timeline(buckets: Sequence[Bucket]) -> list[str]:
    """The timeline as aligned text lines (a header, then one line per second)."""

    def cell(value: float | int | None, digits: int = 1) -> str:
        if value is None:
            return "-"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    header = ("t s", "sent", "acked", "deliv", "ack p50", "ack p99", "hosts", "repl", "events")
    rows = [header] + [
        (str(b.second), str(b.sent), str(b.acked), str(b.delivered), cell(b.ack_p50_ms),
         cell(b.ack_p99_ms), cell(b.hosts), cell(b.replicas), "; ".join(b.events))
        for b in buckets
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    return [
        "  ".join(c.rjust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    ]
