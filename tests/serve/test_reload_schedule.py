"""The pure part of serve/reload.py: which sockets are told to reconnect, and when (no Ray, no
clock: instants are plain numbers)."""

from __future__ import annotations

import random

from serve.reload import ReconnectSchedule, TopologyEvent, spread


def schedule(window_s: float = 60.0, seed: int = 7) -> ReconnectSchedule[str]:
    return ReconnectSchedule(window_s, random.Random(seed))


def test_spread_is_even_with_one_instant_per_share() -> None:
    instants = spread(10, 100.0, 60.0, random.Random(1))
    assert len(instants) == 10
    for i, at in enumerate(instants):
        # Each instant lies in its own sixth-of-ten share of the window.
        assert 100.0 + i * 6.0 <= at < 100.0 + (i + 1) * 6.0
    assert spread(0, 0.0, 60.0, random.Random(1)) == []
    assert spread(3, 5.0, 0.0, random.Random(1)) == [5.0, 5.0, 5.0]


def test_only_sockets_accepted_before_the_cutoff_are_scheduled() -> None:
    s = schedule()
    sockets = [("old1", 1.0), ("old2", 9.9), ("new", 10.0), ("newer", 12.0)]
    planned = s.plan_rebalance(now=10.0, cutoff=10.0, sockets=sockets)
    assert set(planned) == {"old1", "old2"}
    assert all(10.0 <= at < 70.0 for at in planned.values())
    assert s.slot("new") is None and s.slot("newer") is None


def test_slots_cover_the_window_evenly() -> None:
    s = schedule(window_s=60.0)
    planned = s.plan_rebalance(0.0, 1.0, [(f"s{i}", 0.0) for i in range(30)])
    ordered = sorted(planned.values())
    # One slot in each 2-second share of the 60-second window.
    assert [int(at // 2.0) for at in ordered] == list(range(30))


def test_a_scheduled_socket_keeps_its_slot_on_a_second_event() -> None:
    s = schedule()
    first = s.plan_rebalance(0.0, 0.0, [("a", -5.0), ("b", -1.0)])
    # Second event: "a" and "b" keep theirs; "c" (accepted between the events) gets one.
    second = s.plan_rebalance(20.0, 20.0, [("a", -5.0), ("b", -1.0), ("c", 15.0)])
    assert set(second) == {"c"}
    assert 20.0 <= second["c"] < 80.0
    assert s.slot("a") == first["a"] and s.slot("b") == first["b"]


def test_due_sockets_come_out_in_slot_order_once() -> None:
    s = schedule(window_s=10.0)
    planned = s.plan_rebalance(0.0, 1.0, [(k, 0.0) for k in "abcde"])
    by_time = sorted(planned, key=planned.__getitem__)
    assert s.next_due() == planned[by_time[0]]
    assert s.pop_due(-1.0) == []
    middle = planned[by_time[2]]
    assert s.pop_due(middle) == by_time[:3]
    assert s.pop_due(middle) == []
    assert s.pop_due(100.0) == by_time[3:]
    assert len(s) == 0 and s.next_due() is None


def test_forgotten_sockets_never_come_due() -> None:
    s = schedule(window_s=10.0)
    s.plan_rebalance(0.0, 1.0, [("gone", 0.0), ("here", 0.0)])
    s.forget("gone")
    assert s.pop_due(100.0) == ["here"]


def test_a_drain_pulls_late_slots_before_the_deadline_and_keeps_early_ones() -> None:
    s = schedule(window_s=60.0)
    planned = s.plan_rebalance(0.0, 1.0, [(f"s{i}", 0.0) for i in range(12)])
    early = {k for k, at in planned.items() if at < 10.0}
    assert len(early) == 2, "one slot in each 5-second share: two before the deadline"
    # Draining at t=0 with 10 seconds left; "fresh" arrived while draining.
    moved = s.plan_drain(0.0, 10.0, [*planned, "fresh"])
    assert set(moved) == (set(planned) - early) | {"fresh"}
    assert all(0.0 <= at < 10.0 for at in moved.values())
    for k in early:
        assert s.slot(k) == planned[k]
    # Every socket comes due by the deadline, once.
    due = s.pop_due(10.0)
    assert sorted(due) == sorted([*planned, "fresh"])
    assert s.pop_due(1000.0) == []


def test_a_drain_can_hold_its_first_slot_back() -> None:
    s = schedule()
    moved = s.plan_drain(0.0, 10.0, [f"s{i}" for i in range(8)], start=2.0)
    assert all(2.0 <= at < 10.0 for at in moved.values())
    # A start past the deadline: everyone at the deadline's edge, never later.
    late = s.plan_drain(0.0, 1.0, ["x"], start=5.0)
    assert late == {"x": 1.0}


def test_a_drain_past_its_deadline_tells_everyone_now() -> None:
    s = schedule()
    moved = s.plan_drain(10.0, 5.0, ["a", "b"])
    assert moved == {"a": 10.0, "b": 10.0}
    # Already scheduled before the deadline: nothing to move on the next scan.
    assert s.plan_drain(10.5, 5.0, ["a", "b"]) == {}
    assert sorted(s.pop_due(10.0)) == ["a", "b"]


def test_events_round_trip_and_foreign_payloads_are_ignored() -> None:
    event = TopologyEvent(kind="draining", replica_id="r1", at=123.5)
    assert TopologyEvent.decode(event.encode()) == event
    assert TopologyEvent.decode(b"not json") is None
    assert TopologyEvent.decode(b'{"kind": "exploded", "replica": "r", "at": 1}') is None
    assert TopologyEvent.decode(b'{"kind": "ready"}') is None
