"""Delivery accounting for the benchmarks: what was sent, acked and delivered, and how late.

A `Ledger` records every send (with how many devices should receive it), every ack and every
delivery, and turns them into a `Summary`: distinct deliveries, lost and duplicated deliveries,
and latency percentiles. Ledgers of several load-generator processes merge into one: the send
time travels in the message body (see `loadtest.frames`), so a receiver in one process measures
the latency of a message sent from another, and sends and deliveries meet in `merge`.

Definitions (the same for Warbler and the baseline relay):

- *lost*: an acked message that fewer than its expected devices received by the end of the run;
  each missing device counts once. A send never acked is *unacked*, not lost (it was never
  promised as durable).
- *duplicated*: a device received the same ``(conversation, seq)`` twice, or one
  ``client_msg_id`` was stored under two different seqs (the idempotent send failed).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between closest ranks.

    The same definition as numpy's default (``method="linear"``): position ``q/100 * (n-1)``
    in the sorted values. None for no values.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0-100, got {q}")
    if not values:
        return None
    ordered = sorted(values)
    pos = q / 100.0 * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    frac = pos - low
    return ordered[low] + (ordered[high] - ordered[low]) * frac


@dataclass(slots=True)
class SentRecord:
    """One logical message a load generator sent (resends share the record)."""

    conversation_id: int | None
    sent_ns: int
    expected: int
    seq: int | None = None
    acked_ns: int | None = None


@dataclass(slots=True)
class _Reach:
    """Who received one message so far (receivers may live in other processes)."""

    seq: int
    receivers: int = 0
    last_ns: int = 0


@dataclass
class Ledger:
    """Sends, acks and deliveries of one run (or one process's share of it); mergeable."""

    sent: dict[str, SentRecord] = field(default_factory=dict)
    reach: dict[str, _Reach] = field(default_factory=dict)
    # (receiver, conversation) -> seqs that receiver got: detects repeated deliveries.
    seen: dict[tuple[str, int], set[int]] = field(default_factory=dict)
    ack_ms: list[float] = field(default_factory=list)
    delivery_ms: list[float] = field(default_factory=list)
    duplicated: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    first_send_ns: int | None = None
    last_delivery_ns: int | None = None
    last_ack_ns: int | None = None
    # (sent_ns, delivered_ns) of every first delivery, when asked for (the recovery scenario).
    timeline: list[tuple[int, int]] | None = None

    def record_send(
        self, client_msg_id: str, conversation_id: int | None, sent_ns: int, expected: int
    ) -> None:
        """A new message left a generator; ``expected`` devices should receive it."""
        if client_msg_id in self.sent:
            return  # a resend of the same message: the first send time stands
        self.sent[client_msg_id] = SentRecord(conversation_id, sent_ns, expected)
        if self.first_send_ns is None or sent_ns < self.first_send_ns:
            self.first_send_ns = sent_ns

    def record_ack(self, client_msg_id: str, conversation_id: int, seq: int, now_ns: int) -> None:
        """The server made a send durable under ``seq``."""
        record = self.sent.get(client_msg_id)
        if record is None:
            self.errors["unknown_ack"] += 1
            return
        if record.seq is not None:
            if record.seq != seq:
                self.duplicated += 1  # the same client_msg_id stored twice
            return
        record.seq = seq
        record.conversation_id = conversation_id
        record.acked_ns = now_ns
        self.ack_ms.append((now_ns - record.sent_ns) / NS_PER_MS)
        if self.last_ack_ns is None or now_ns > self.last_ack_ns:
            self.last_ack_ns = now_ns

    def record_delivery(
        self,
        receiver: str,
        conversation_id: int,
        seq: int,
        client_msg_id: str,
        sent_ns: int,
        now_ns: int,
    ) -> bool:
        """A device received a message; returns False when it is a duplicate."""
        seqs = self.seen.setdefault((receiver, conversation_id), set())
        if seq in seqs:
            self.duplicated += 1
            return False
        seqs.add(seq)
        reach = self.reach.get(client_msg_id)
        if reach is None:
            reach = self.reach[client_msg_id] = _Reach(seq)
        elif reach.seq != seq:
            # Delivered under another seq than before: stored twice.
            self.duplicated += 1
            return False
        reach.receivers += 1
        if now_ns > reach.last_ns:
            reach.last_ns = now_ns
        self.delivery_ms.append((now_ns - sent_ns) / NS_PER_MS)
        if self.timeline is not None:
            self.timeline.append((sent_ns, now_ns))
        if self.last_delivery_ns is None or now_ns > self.last_delivery_ns:
            self.last_delivery_ns = now_ns
        return True

    def record_error(self, code: str) -> None:
        """An error frame (or a connection failure) seen by a generator."""
        self.errors[code] += 1

    def outstanding(self) -> int:
        """Sends not acked yet."""
        return sum(1 for r in self.sent.values() if r.seq is None)

    def merge(self, other: Ledger) -> None:
        """Fold another process's ledger into this one."""
        for cmid, record in other.sent.items():
            mine = self.sent.get(cmid)
            if mine is None or (mine.seq is None and record.seq is not None):
                self.sent[cmid] = record
        for cmid, reach in other.reach.items():
            have = self.reach.get(cmid)
            if have is None:
                self.reach[cmid] = _Reach(reach.seq, reach.receivers, reach.last_ns)
            elif have.seq != reach.seq:
                self.duplicated += reach.receivers
            else:
                have.receivers += reach.receivers
                have.last_ns = max(have.last_ns, reach.last_ns)
        for key, seqs in other.seen.items():
            mine_seqs = self.seen.setdefault(key, set())
            self.duplicated += len(mine_seqs & seqs)
            mine_seqs |= seqs
        self.ack_ms.extend(other.ack_ms)
        self.delivery_ms.extend(other.delivery_ms)
        if other.timeline is not None:
            self.timeline = (self.timeline or []) + other.timeline
        self.duplicated += other.duplicated
        self.errors.update(other.errors)
        self.first_send_ns = _min_opt(self.first_send_ns, other.first_send_ns)
        self.last_delivery_ns = _max_opt(self.last_delivery_ns, other.last_delivery_ns)
        self.last_ack_ns = _max_opt(self.last_ack_ns, other.last_ack_ns)

    def summary(self) -> Summary:
        """Counts and latency percentiles of everything recorded."""
        acked = lost = delivered = 0
        fanout_ms: list[float] = []
        for cmid, record in self.sent.items():
            reach = self.reach.get(cmid)
            got = reach.receivers if reach is not None else 0
            delivered += got
            if record.seq is None:
                continue
            acked += 1
            lost += max(0, record.expected - got)
            if reach is not None and record.expected > 0 and got >= record.expected:
                fanout_ms.append((reach.last_ns - record.sent_ns) / NS_PER_MS)
        end_ns = _max_opt(self.last_delivery_ns, self.last_ack_ns)
        window_s = 0.0
        if self.first_send_ns is not None and end_ns is not None:
            window_s = max(0.0, (end_ns - self.first_send_ns) / NS_PER_S)
        return Summary(
            sent=len(self.sent),
            acked=acked,
            unacked=len(self.sent) - acked,
            delivered=delivered,
            lost=lost,
            duplicated=self.duplicated,
            errors=dict(self.errors),
            window_s=window_s,
            ack=LatencyStats.of(self.ack_ms),
            delivery=LatencyStats.of(self.delivery_ms),
            fanout=LatencyStats.of(fanout_ms),
        )


@dataclass(frozen=True)
class LatencyStats:
    """Percentiles of one latency distribution, in milliseconds (None when empty)."""

    count: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> LatencyStats:
        """Summarize a list of latencies."""
        ordered = sorted(values)
        return cls(
            count=len(ordered),
            p50_ms=percentile(ordered, 50),
            p90_ms=percentile(ordered, 90),
            p99_ms=percentile(ordered, 99),
            max_ms=ordered[-1] if ordered else None,
        )


@dataclass(frozen=True)
class Summary:
    """The outcome of a run: counts, the measured window and latency distributions.

    ``delivery`` is per (message, device); ``fanout`` is per message, to its last device (the
    "p99 to the last member" of a group).
    """

    sent: int
    acked: int
    unacked: int
    delivered: int
    lost: int
    duplicated: int
    errors: dict[str, int]
    window_s: float
    ack: LatencyStats
    delivery: LatencyStats
    fanout: LatencyStats

    @property
    def delivered_per_s(self) -> float:
        """Distinct deliveries per second over the window from first send to last delivery."""
        return self.delivered / self.window_s if self.window_s > 0 else 0.0

    @property
    def acked_per_s(self) -> float:
        """Acked sends per second over the same window."""
        return self.acked / self.window_s if self.window_s > 0 else 0.0


def recovery_s(timeline: Iterable[tuple[int, int]], fault_ns: int, until_ns: int) -> float:
    """How long the fault at ``fault_ns`` held messages up: the longest any message sent before
    ``until_ns`` and delivered after the fault waited, counted from the fault (or from its send
    when sent later). 0.0 when no delivery came after the fault."""
    worst = 0
    for sent_ns, delivered_ns in timeline:
        if sent_ns < until_ns and delivered_ns >= fault_ns:
            worst = max(worst, delivered_ns - max(sent_ns, fault_ns))
    return worst / NS_PER_S


def merge_all(ledgers: Iterable[Ledger]) -> Ledger:
    """One ledger holding everything the given ones recorded."""
    total = Ledger()
    for ledger in ledgers:
        total.merge(ledger)
    return total


def _min_opt(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _max_opt(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


@dataclass
class _Stream:
    floor: int  # the first seq seen: the stream is checked from here on
    contiguous: int  # every seq from floor up to here was seen (or declared lost)
    above: set[int] = field(default_factory=set)  # seen, beyond contiguous
    missing: dict[int, float] = field(default_factory=dict)  # gap seq -> noticed at
    declared: set[int] = field(default_factory=set)  # reported lost (may still turn up)
    # Seen beyond contiguous when the device resumed: the server replays them (its cursor is
    # the contiguous seq), and a replay is not a duplicate.
    replay: set[int] = field(default_factory=set)


class StreamCheck:
    """One device's per-conversation seq streams, checked as they arrive (locust users).

    Seqs of a conversation are gapless, and a device sees every one of them (others' as
    `message` frames, its own as `ack` frames), but acks and messages may interleave out of
    order. So a repeated seq is a duplicate at once, while a gap only counts as lost once it
    has stayed open for ``grace_s``. A stream is checked from the first seq seen in it (a device
    may join a conversation mid-stream).
    """

    # A jump larger than this is not tracked seq by seq (memory stays bounded).
    MAX_GAP = 10_000

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._streams: dict[int, _Stream] = {}

    def see(self, conversation_id: int, seq: int, now: float) -> bool:
        """Record a seq; False when the device already had it (a duplicate)."""
        stream = self._streams.get(conversation_id)
        if stream is None:
            self._streams[conversation_id] = _Stream(floor=seq, contiguous=seq)
            return True
        if seq < stream.floor:  # from before this device joined the stream: not checked
            return True
        if seq in stream.declared:  # late, after being reported lost: not a duplicate
            stream.declared.discard(seq)
            return True
        if seq in stream.replay:  # replayed after a resume, as its cursor asked
            stream.replay.discard(seq)
            return True
        if seq <= stream.contiguous or seq in stream.above:
            return False
        stream.missing.pop(seq, None)
        stream.above.add(seq)
        for gap in range(max(stream.contiguous + 1, seq - self.MAX_GAP), seq):
            if gap not in stream.above and gap not in stream.missing:
                stream.missing[gap] = now
        self._advance(stream)
        return True

    def resume(self) -> dict[int, int]:
        """The cursors a reconnecting device sends (each stream's contiguous seq); the seqs
        seen above them may come again and will not count as duplicates."""
        for stream in self._streams.values():
            stream.replay = set(stream.above)
        return {conv: stream.contiguous for conv, stream in self._streams.items()}

    def overdue(self, now: float) -> list[tuple[int, int]]:
        """(conversation, seq) gaps open longer than the grace period: lost, reported once."""
        lost = []
        for conv, stream in self._streams.items():
            late = [s for s, since in stream.missing.items() if now - since > self.grace_s]
            for seq in late:
                del stream.missing[seq]
                stream.declared.add(seq)
                stream.above.add(seq)
                lost.append((conv, seq))
            if late:
                self._advance(stream)
        return lost

    @staticmethod
    def _advance(stream: _Stream) -> None:
        while stream.contiguous + 1 in stream.above:
            stream.contiguous += 1
            stream.above.discard(stream.contiguous)
