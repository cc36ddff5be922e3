"""Shard math and shard-map changes (pure: no Redis, no Ray)."""

from __future__ import annotations

from collections import Counter

import pytest

from actors.directory import (
    Ownership,
    ShardMap,
    initial_map,
    shard_of,
    with_host_added,
    with_host_removed,
    with_pin,
    without_pin,
)
from warbler.errors import ErrorCode, WarblerError

# Pinned values: a change of hash would silently re-home every entity of a running cluster.
EXPECTED = [90, 134, 215]


def test_shard_of_is_stable_and_spread() -> None:
    # crc32 of the key: the same in every process and Python version (unlike hash()).
    assert [shard_of(k, 256) for k in ("conv:1", "user:42", "conv:123456")] == EXPECTED
    counts = Counter(shard_of(f"conv:{i}", 16) for i in range(16_000))
    assert set(counts) == set(range(16))
    assert max(counts.values()) < 1.2 * min(counts.values())


def test_initial_map_deals_round_robin() -> None:
    m = initial_map(["a", "b", "c"], 10)
    assert m.epoch == 1 and m.num_shards == 10
    assert [len(m.shards_of(h)) for h in "abc"] == [4, 3, 3]
    with pytest.raises(WarblerError):
        initial_map([], 4)


def test_adding_a_host_moves_only_its_share() -> None:
    before = initial_map(["a", "b"], 256)
    after = with_host_added(before, "c")
    assert after.epoch == 2
    moved = [i for i in range(256) if before.shards[i] != after.shards[i]]
    assert all(after.shards[i] == "c" for i in moved)
    assert len(moved) == 256 // 3
    assert sorted(len(after.shards_of(h)) for h in "abc") == [85, 85, 86]
    with pytest.raises(WarblerError) as err:
        with_host_added(after, "a")
    assert err.value.code == ErrorCode.CONFLICT


def test_removing_a_host_spreads_its_shards() -> None:
    before = with_host_added(initial_map(["a", "b"], 256), "c")
    after = with_host_removed(before, "a")
    assert "a" not in after.shards and after.epoch == before.epoch + 1
    assert all(before.shards[i] == after.shards[i] for i in range(256) if before.shards[i] != "a")
    assert abs(len(after.shards_of("b")) - len(after.shards_of("c"))) <= 1
    with pytest.raises(WarblerError):
        with_host_removed(with_host_removed(after, "b"), "c")  # never the last host


def test_pins_take_precedence_and_round_trip_through_json() -> None:
    base = initial_map(["a", "b"], 64)
    pinned = with_pin(base, "conv:7", "dedicated-conv-7")
    assert pinned.owner("conv:7") == "dedicated-conv-7"
    assert pinned.owner("conv:8") == base.owner("conv:8")
    assert pinned.all_hosts() == ["a", "b", "dedicated-conv-7"]
    assert ShardMap.from_json(pinned.to_json()) == pinned
    assert without_pin(pinned, "conv:7").owner("conv:7") == base.owner("conv:7")
    with pytest.raises(WarblerError):
        with_pin(base, "conv:7", "a")  # a pool host cannot be dedicated


def test_ownership_during_a_move_is_the_intersection() -> None:
    old = initial_map(["a", "b"], 64)
    new = with_host_added(old, "c")
    moving = next(f"conv:{i}" for i in range(1000) if new.owner(f"conv:{i}") == "c")
    staying = next(
        f"conv:{i}" for i in range(1000) if old.owner(f"conv:{i}") == new.owner(f"conv:{i}")
    )
    loser = Ownership(old.owner(moving), [old, new])
    gainer = Ownership("c", [old, new])
    # Mid-move nobody serves the moving key: the loser stopped, the gainer has not started.
    assert not loser.owns(moving) and not gainer.owns(moving)
    assert Ownership(old.owner(staying), [old, new]).owns(staying)
    assert Ownership("c", [new]).owns(moving)
    assert loser.epoch == 2
