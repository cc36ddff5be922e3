"""Client-side coalescing in HostChannel, against a stand-in for a Ray actor handle."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors.batcher import HostChannel


class EchoHost:
    """Answers each envelope with ``(key, message)`` after ``delay_s``; records batch sizes."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.handle_batch = self
        self.sizes: list[int] = []
        self.delay_s = delay_s
        self.fail = fail

    def remote(self, epoch: int, envelopes: list[tuple[str, object]]) -> asyncio.Task[Any]:
        self.sizes.append(len(envelopes))

        async def answer() -> tuple[int, list[object]]:
            await asyncio.sleep(self.delay_s)
            if self.fail:
                raise ConnectionError("host gone")
            return epoch, list(envelopes)

        return asyncio.ensure_future(answer())


def channel(host: EchoHost, **kw: Any) -> HostChannel:
    options = {"window_s": 0.005, "max_batch": 100, "max_inflight": 1, **kw}
    return HostChannel("h", host, lambda: 7, lambda epoch: None, **options)


async def test_calls_within_the_window_share_one_call_and_keep_their_order() -> None:
    host = EchoHost()
    ch = channel(host)
    futures = [ch.submit(f"k{i}", i) for i in range(50)]
    assert [await f for f in futures] == [(f"k{i}", i) for i in range(50)]
    assert host.sizes == [50]


async def test_max_batch_splits() -> None:
    host = EchoHost()
    ch = channel(host, max_batch=20, max_inflight=4)
    futures = [ch.submit("k", i) for i in range(50)]
    await asyncio.gather(*futures)
    assert host.sizes == [20, 20, 10]


async def test_calls_coalesce_while_a_batch_is_in_flight() -> None:
    host = EchoHost(delay_s=0.05)
    ch = channel(host, window_s=0.0)
    first = ch.submit("k", 0)  # window 0: leaves at once
    await asyncio.sleep(0.01)
    rest = [ch.submit("k", i) for i in range(1, 30)]
    await asyncio.gather(first, *rest)
    assert host.sizes == [1, 29]


async def test_a_lost_batch_fails_every_call_in_it() -> None:
    host = EchoHost(fail=True)
    ch = channel(host)
    futures = [ch.submit("k", i) for i in range(3)]
    for future in futures:
        with pytest.raises(ConnectionError):
            await future


class SilentHost:
    """Never answers: a reply lost on the way (the batch must not hold its slot forever)."""

    def __init__(self) -> None:
        self.handle_batch = self
        self.batches = 0

    def remote(self, epoch: int, envelopes: list[tuple[str, object]]) -> asyncio.Future[Any]:
        self.batches += 1
        return asyncio.get_running_loop().create_future()


async def test_a_batch_without_an_answer_fails_and_frees_the_channel() -> None:
    from ray.exceptions import ActorUnavailableError

    host = SilentHost()
    ch = HostChannel(
        "h", host, lambda: 7, lambda epoch: None,
        window_s=0.0, max_batch=100, max_inflight=1, batch_timeout_s=0.05,
    )
    first = ch.submit("k", 1)
    with pytest.raises(ActorUnavailableError):
        await asyncio.wait_for(first, 5.0)  # without the bound: TimeoutError here
    # The slot is free again: the next envelope leaves (and times out the same way).
    second = ch.submit("k", 2)
    with pytest.raises(ActorUnavailableError):
        await asyncio.wait_for(second, 5.0)
    assert host.batches == 2
    await asyncio.wait_for(ch.close(), 5.0)  # nothing left in flight to wait for
