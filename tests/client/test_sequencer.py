"""Sequencer: exactly-once, in-order per conversation from a replaying, gappy stream."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from client.sequencer import Sequencer
from warbler.errors import ErrorCode, WarblerError


@dataclass(frozen=True)
class Msg:
    conversation_id: int
    seq: int


class History:
    """A conversation log the sequencer can fetch gaps from; records each fetch."""

    def __init__(self, last: int, conv: int = 1) -> None:
        self.log = [Msg(conv, s) for s in range(1, last + 1)]
        self.fetches: list[tuple[int, int, int]] = []

    async def fetch(self, conv: int, after: int, until: int) -> list[Msg]:
        self.fetches.append((conv, after, until))
        return [m for m in self.log if after < m.seq <= until]


async def test_in_order_stream_passes_through_and_duplicates_drop() -> None:
    seq = Sequencer({1: 0})
    history = History(3)
    out = []
    for s in [1, 2, 2, 1, 3, 3]:
        out += await seq.admit(Msg(1, s), history.fetch)
    assert [m.seq for m in out] == [1, 2, 3]
    assert history.fetches == []
    assert seq.snapshot() == {1: 3}


async def test_gap_is_filled_from_history_before_the_new_message() -> None:
    seq = Sequencer({1: 2})
    history = History(10)
    out = await seq.admit(Msg(1, 6), history.fetch)
    assert [m.seq for m in out] == [3, 4, 5, 6]
    assert history.fetches == [(1, 2, 5)]
    # The replayed messages of the gap, arriving late, are now duplicates.
    for s in (3, 4, 5, 6):
        assert await seq.admit(Msg(1, s), history.fetch) == []
    assert [m.seq for m in await seq.admit(Msg(1, 7), history.fetch)] == [7]


async def test_unfillable_gap_raises_and_keeps_the_cursor() -> None:
    seq = Sequencer({1: 2})
    history = History(3)  # history lags: 4 and 5 are not visible yet
    with pytest.raises(WarblerError) as err:
        await seq.admit(Msg(1, 6), history.fetch)
    assert err.value.code is ErrorCode.UNAVAILABLE
    assert seq.cursor(1) == 2


async def test_unknown_conversation_is_delivered_from_its_first_message() -> None:
    seq = Sequencer()
    history = History(9, conv=5)
    assert not seq.known(5)
    assert [m.seq for m in await seq.admit(Msg(5, 3), history.fetch)] == [1, 2, 3]
    assert history.fetches == [(5, 0, 2)]
    assert [m.seq for m in await seq.admit(Msg(5, 4), history.fetch)] == [4]
    assert seq.known(5)


async def test_conversations_are_independent() -> None:
    seq = Sequencer({1: 1, 2: 5})
    history = History(10)
    assert [m.seq for m in await seq.admit(Msg(2, 6), history.fetch)] == [6]
    assert [m.seq for m in await seq.admit(Msg(1, 2), history.fetch)] == [2]
    assert await seq.admit(Msg(2, 6), history.fetch) == []


def test_backlog_takes_the_contiguous_run_past_the_cursor() -> None:
    seq = Sequencer({1: 3})
    backlog = [Msg(1, s) for s in (2, 3, 5, 4, 6, 8)]
    assert [m.seq for m in seq.admit_backlog(1, backlog)] == [4, 5, 6]
    assert seq.cursor(1) == 6


def test_seed_never_lowers() -> None:
    seq = Sequencer({1: 5})
    seq.seed(1, 3)
    seq.seed(2, 4)
    assert seq.snapshot() == {1: 5, 2: 4}
    assert seq.is_duplicate(1, 5) and not seq.is_duplicate(1, 6)
