"""The scale scenario's arithmetic: timeline buckets, new-host shares, what a move touched."""

from __future__ import annotations

import pytest

from actors.directory import initial_map, with_host_added
from actors.names import conv_key, user_key
from loadtest.accounting import NS_PER_MS, NS_PER_S, Ledger
from loadtest.scenarios.common import BenchOptions
from loadtest.scenarios.scale import STEPS, ScaleOptions, scale_options
from loadtest.timeline import (
    EventMark,
    PoolSample,
    bucket_timeline,
    fair_share_s,
    first_handled_s,
    lost_by_second,
    move_impact,
    moved_conversations,
    render_timeline,
)

T0 = 1_800_000_000 * NS_PER_S
MS = NS_PER_MS


def _ledger() -> Ledger:
    ledger = Ledger(timeline=[])
    # m1: sent at 0.1 s, acked at 0.2 s, delivered at 0.3 s.
    ledger.record_send("m1", 7, T0 + 100 * MS, expected=1)
    ledger.record_ack("m1", 7, 1, T0 + 200 * MS)
    ledger.record_delivery("r", 7, 1, "m1", T0 + 100 * MS, T0 + 300 * MS)
    # m2: sent at 0.9 s, acked at 1.5 s (600 ms), delivered at 1.6 s.
    ledger.record_send("m2", 7, T0 + 900 * MS, expected=1)
    ledger.record_ack("m2", 7, 2, T0 + 1500 * MS)
    ledger.record_delivery("r", 7, 2, "m2", T0 + 900 * MS, T0 + 1600 * MS)
    # m3: sent at 2.2 s, acked at 2.3 s, never delivered (lost); m4: never acked.
    ledger.record_send("m3", 8, T0 + 2200 * MS, expected=1)
    ledger.record_ack("m3", 8, 1, T0 + 2300 * MS)
    ledger.record_send("m4", 8, T0 + 2400 * MS, expected=1)
    return ledger


def test_buckets_count_sends_acks_and_deliveries_by_their_own_second() -> None:
    samples = [PoolSample(T0 + 500 * MS, {"host-0": 3}, replicas=1),
               PoolSample(T0 + 2500 * MS, {"host-0": 9, "host-1": 1}, replicas=2)]
    events = [EventMark("add host host-1", T0 + 2100 * MS, T0 + 2900 * MS)]
    buckets = bucket_timeline(_ledger(), samples, events, T0, T0 + 3 * NS_PER_S)

    assert [b.second for b in buckets] == [0, 1, 2]
    assert [b.sent for b in buckets] == [2, 0, 2]
    assert [b.acked for b in buckets] == [1, 1, 1]
    assert [b.delivered for b in buckets] == [1, 1, 0]
    assert buckets[1].ack_ms == [pytest.approx(600.0)]
    assert buckets[1].ack_p99_ms == pytest.approx(600.0)
    # A second with no poll carries the last one forward.
    assert [(b.hosts, b.replicas) for b in buckets] == [(1, 1), (1, 1), (2, 2)]
    assert [b.events for b in buckets] == [[], [], ["add host host-1"]]
    assert buckets[2].to_json()["ack_p50_ms"] == 100.0


def test_render_timeline_has_a_header_and_a_line_per_second() -> None:
    buckets = bucket_timeline(_ledger(), [], [EventMark("x", T0, T0)], T0, T0 + 3 * NS_PER_S)
    lines = render_timeline(buckets)
    assert len(lines) == 4
    assert lines[0].split()[:2] == ["t", "s"]
    assert lines[1].rstrip().endswith("x")


def test_lost_by_second_counts_acked_messages_missing_a_device_by_send_second() -> None:
    assert lost_by_second(_ledger(), T0) == {2: 1}


def test_first_envelope_and_fair_share_of_a_new_host() -> None:
    start = T0
    # host-1 appears at 1 s with 0 envelopes, handles its first by 1.5 s, and its share of
    # the pool's rate grows: 10% over 1.5-2.5 s, 50% over 2.5-3.5 s.
    samples = [
        PoolSample(T0 + 500 * MS, {"host-0": 100}),
        PoolSample(T0 + 1000 * MS, {"host-0": 200, "host-1": 0}),
        PoolSample(T0 + 1500 * MS, {"host-0": 300, "host-1": 5}),
        PoolSample(T0 + 2500 * MS, {"host-0": 480, "host-1": 25}),
        PoolSample(T0 + 3500 * MS, {"host-0": 580, "host-1": 125}),
    ]
    assert first_handled_s(samples, "host-1", start) == pytest.approx(1.5)
    assert fair_share_s(samples, "host-1", start) == pytest.approx(3.5)
    assert fair_share_s(samples, "host-1", start, share=0.2) == pytest.approx(2.5)
    assert fair_share_s(samples, "host-1", start, share=0.01) == pytest.approx(1.5)
    assert first_handled_s(samples, "host-9", start) is None
    assert fair_share_s(samples, "host-9", start) is None
    # Polls before the event do not count.
    assert first_handled_s(samples, "host-1", T0 + 2 * NS_PER_S) == pytest.approx(0.5)


def test_moved_conversations_follow_the_conversation_and_its_members() -> None:
    before = initial_map(["host-0"], 64)
    after = with_host_added(before, "host-1")
    members = {c: (1000 + c, 2000 + c) for c in range(1, 200)}
    moved = moved_conversations(before, after, members)

    def on_new(key: str) -> bool:
        return after.owner(key) == "host-1"

    expected = {c for c, (a, b) in members.items()
                if on_new(conv_key(c)) or on_new(user_key(a)) or on_new(user_key(b))}
    assert moved == expected
    # By the conversation's own key alone about half move (the new host takes half the shards).
    alone = moved_conversations(before, after, dict.fromkeys(members, ()))
    assert alone == {c for c in members if on_new(conv_key(c))}
    assert 0 < len(alone) < len(members)
    assert moved_conversations(before, before, members) == set()


def test_move_impact_takes_messages_in_flight_during_the_move() -> None:
    ledger = Ledger()
    move = EventMark("remove host host-0", T0 + NS_PER_S, T0 + 2 * NS_PER_S)
    ledger.record_send("before", 1, T0, 1)
    ledger.record_ack("before", 1, 1, T0 + 100 * MS)  # done before the move: not counted
    ledger.record_send("over", 1, T0 + 900 * MS, 1)
    ledger.record_ack("over", 1, 2, T0 + 2300 * MS)  # 1.4 s; waited 1.3 s from the start
    ledger.record_send("during", 1, T0 + 1500 * MS, 1)
    ledger.record_ack("during", 1, 3, T0 + 1700 * MS)
    ledger.record_send("lost", 1, T0 + 1600 * MS, 1)  # never acked
    ledger.record_send("after", 1, T0 + 2500 * MS, 1)
    ledger.record_ack("after", 1, 4, T0 + 5000 * MS)  # sent after the move: not counted
    ledger.record_send("elsewhere", 2, T0 + 1500 * MS, 1)
    ledger.record_ack("elsewhere", 2, 1, T0 + 4000 * MS)  # another conversation

    impact = move_impact(ledger, {1}, move)
    assert impact.conversations == 1
    assert impact.in_flight == 2
    assert impact.max_ack_ms == pytest.approx(1400.0)
    assert impact.unavailable_s == pytest.approx(1.3)
    assert impact.unacked == 1
    assert move_impact(ledger, set(), move).max_ack_ms is None


def test_scale_options_extend_the_shared_ones() -> None:
    shared = BenchOptions(workers=3, duration_s=2.0)
    options = scale_options(shared)
    assert isinstance(options, ScaleOptions)
    assert (options.workers, options.duration_s, options.surge) == (3, 2.0, 1000)
    assert scale_options(options) is options


def test_steps_start_static_and_undo_every_change() -> None:
    assert STEPS[0].action is None
    hosts = sum(1 if s.action == "add host" else -1 if s.action == "remove host" else 0
                for s in STEPS)
    assert hosts == 1  # two added, the original removed
    assert STEPS[-1].kwargs == {"count": 1}
    assert sum(1 for s in STEPS if s.surge) == 1
