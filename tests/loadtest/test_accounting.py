"""The bench's arithmetic: percentiles, lost and duplicated counting, merging, recovery time."""

from __future__ import annotations

import pytest

from loadtest.accounting import (
    NS_PER_MS,
    NS_PER_S,
    Ledger,
    StreamCheck,
    merge_all,
    percentile,
    recovery_s,
)

MS = NS_PER_MS


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [15.0, 20.0, 35.0, 40.0, 50.0]
    # Position q/100 * (n - 1): 0.0, 1.0 (20), 2.0 (35), 0.9 * 4 = 3.6 -> 40 + 0.6 * 10.
    assert percentile(values, 0) == 15.0
    assert percentile(values, 25) == 20.0
    assert percentile(values, 50) == 35.0
    assert percentile(values, 90) == pytest.approx(46.0)
    assert percentile(values, 100) == 50.0


def test_percentile_does_not_depend_on_order_and_handles_edges() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    ramp = [float(i) for i in range(1, 101)]  # 1..100
    assert percentile(ramp, 99) == pytest.approx(99.01)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_lost_counts_each_missing_device_of_acked_messages_only() -> None:
    ledger = Ledger()
    ledger.record_send("r.1.1", 10, 0, expected=2)
    ledger.record_ack("r.1.1", 10, 1, 2 * MS)
    ledger.record_delivery("dev-a", 10, 1, "r.1.1", 0, 5 * MS)  # dev-b never gets it
    ledger.record_send("r.1.2", 10, 0, expected=2)  # never acked: unacked, not lost
    summary = ledger.summary()
    assert (summary.sent, summary.acked, summary.unacked) == (2, 1, 1)
    assert summary.delivered == 1
    assert summary.lost == 1
    assert summary.duplicated == 0
    assert summary.ack.p50_ms == 2.0
    assert summary.delivery.p50_ms == 5.0
    assert summary.fanout.count == 0  # the message never reached all its devices


def test_duplicates_same_seq_twice_and_one_message_under_two_seqs() -> None:
    ledger = Ledger()
    ledger.record_send("r.1.1", 10, 0, expected=1)
    ledger.record_ack("r.1.1", 10, 1, MS)
    assert ledger.record_delivery("dev-a", 10, 1, "r.1.1", 0, 2 * MS)
    assert not ledger.record_delivery("dev-a", 10, 1, "r.1.1", 0, 3 * MS)  # replayed
    assert not ledger.record_delivery("dev-b", 10, 2, "r.1.1", 0, 3 * MS)  # stored twice
    ledger.record_ack("r.1.1", 10, 1, 4 * MS)  # an idempotent resend: same seq, fine
    ledger.record_ack("r.1.1", 10, 7, 4 * MS)  # a resend stored again: a duplicate
    summary = ledger.summary()
    assert summary.duplicated == 3
    assert summary.delivered == 1
    assert summary.lost == 0
    assert summary.ack.count == 1  # latency counts the first ack only


def test_merge_joins_sends_and_deliveries_of_several_processes() -> None:
    sender, left, right = Ledger(), Ledger(), Ledger()
    for n in (1, 2):
        sender.record_send(f"r.1.{n}", 10, n * MS, expected=2)
        sender.record_ack(f"r.1.{n}", 10, n, n * MS + MS)
    left.record_delivery("dev-a", 10, 1, "r.1.1", MS, 4 * MS)
    right.record_delivery("dev-b", 10, 1, "r.1.1", MS, 9 * MS)
    left.record_delivery("dev-a", 10, 2, "r.1.2", 2 * MS, 5 * MS)
    summary = merge_all([sender, left, right]).summary()
    assert summary.delivered == 3
    assert summary.lost == 1  # r.1.2 never reached dev-b
    assert summary.duplicated == 0
    # To the last device: only r.1.1 reached both, last at 9 ms, sent at 1 ms.
    assert summary.fanout.count == 1
    assert summary.fanout.max_ms == 8.0
    # Window: first send (1 ms) to last delivery (9 ms); 3 deliveries in 8 ms.
    assert summary.window_s == pytest.approx(0.008)
    assert summary.delivered_per_s == pytest.approx(375.0)


def test_merge_counts_a_device_reported_by_two_ledgers_as_duplicated() -> None:
    one, two = Ledger(), Ledger()
    one.record_delivery("dev-a", 10, 1, "r.1.1", 0, MS)
    two.record_delivery("dev-a", 10, 1, "r.1.1", 0, 2 * MS)
    assert merge_all([one, two]).summary().duplicated == 1


def test_recovery_is_the_longest_wait_caused_by_the_fault() -> None:
    fault, until = 10 * NS_PER_S, 20 * NS_PER_S
    timeline = [
        (5 * NS_PER_S, 5 * NS_PER_S + MS),  # before the fault: ignored
        (9 * NS_PER_S, 12 * NS_PER_S),  # stuck across the fault: 2 s from the fault
        (11 * NS_PER_S, 12 * NS_PER_S + NS_PER_S // 2),  # sent after it: 1.5 s from its send
        (21 * NS_PER_S, 30 * NS_PER_S),  # sent after `until`: another fault's doing
    ]
    assert recovery_s(timeline, fault, until) == 2.0
    assert recovery_s([], fault, until) == 0.0


def test_stream_check_flags_repeats_at_once_and_gaps_after_the_grace() -> None:
    check = StreamCheck(grace_s=5.0)
    assert check.see(12, 4, now=0.0)  # first seen: the stream starts here
    assert check.see(12, 5, now=0.1)
    assert not check.see(12, 5, now=0.2)  # repeated
    assert not check.see(12, 4, now=0.2)
    assert check.see(12, 8, now=1.0)  # 6 and 7 are missing, maybe only late
    assert check.see(12, 6, now=2.0)  # late, not lost
    assert check.overdue(now=5.5) == []  # 7 has been missing 4.5 s
    assert check.overdue(now=6.5) == [(12, 7)]
    assert check.overdue(now=9.0) == []  # reported once
    assert check.see(12, 7, now=9.5)  # turned up after all: not a duplicate
    assert check.see(12, 9, now=10.0)
    assert not check.see(12, 8, now=10.0)
    assert check.see(15, 1, now=10.0)  # another conversation, its own stream


def test_stream_check_does_not_judge_seqs_from_before_its_first() -> None:
    check = StreamCheck(grace_s=5.0)
    assert check.see(12, 2, now=0.0)  # joined mid-stream (seq 1 went out before we subscribed)
    assert check.see(12, 1, now=0.1)  # arrives late: not a duplicate, not checked
    assert not check.see(12, 2, now=0.2)


def test_stream_check_resume_sends_contiguous_cursors_and_accepts_the_replay() -> None:
    check = StreamCheck(grace_s=5.0)
    for seq in (1, 2, 3, 5, 6):  # 4 is still in flight when the device reconnects
        assert check.see(12, seq, now=0.0)
    assert check.see(15, 7, now=0.0)
    assert check.resume() == {12: 3, 15: 7}
    # The server replays everything after the cursor: 4 is new, 5 and 6 are replays.
    assert check.see(12, 4, now=1.0)
    assert check.see(12, 5, now=1.0) and check.see(12, 6, now=1.0)
    # A replay is forgiven once; the same seq again is a duplicate.
    assert not check.see(12, 5, now=1.1)
    assert check.overdue(now=10.0) == []
