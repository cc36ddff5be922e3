"""Runtime.call and call_many check each answer against its message's reply type (no Ray: a
stand-in host answers the batches)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from actors.directory import ShardMap
from actors.messages import ConversationInfo, GetInfo, GetSession, SessionInfo
from actors.runtime import Runtime
from warbler.config import Settings
from warbler.errors import ErrorCode, WarblerError

INFO = ConversationInfo(1, "group", "t", (), 0)


class AnsweringHost:
    """Answers envelope ``i`` with ``answers[i]``."""

    def __init__(self, answers: list[object]) -> None:
        self.handle_batch = self
        self.answers = answers

    def remote(self, epoch: int, envelopes: list[tuple[str, object]]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result((epoch, self.answers[: len(envelopes)]))
        return future


def runtime_with(settings: Settings, redis: aioredis.Redis, answers: list[object]) -> Runtime:
    runtime = Runtime(settings, redis)
    # What refresh() would have loaded from Redis: one host serving every shard.
    runtime._map = ShardMap(1, ("h",), ("h",))
    runtime._handles["h"] = AnsweringHost(answers)
    return runtime


async def test_call_returns_the_declared_reply(settings: Settings, redis: aioredis.Redis) -> None:
    runtime = runtime_with(settings, redis, [INFO])
    assert await runtime.call("conv:1", GetInfo(7)) is INFO


async def test_call_raises_an_entitys_error_as_it_is(
    settings: Settings, redis: aioredis.Redis
) -> None:
    runtime = runtime_with(settings, redis, [WarblerError(ErrorCode.NOT_MEMBER, "no")])
    with pytest.raises(WarblerError) as raised:
        await runtime.call("conv:1", GetInfo(7))
    assert raised.value.code == ErrorCode.NOT_MEMBER


async def test_an_answer_of_another_type_is_internal(
    settings: Settings, redis: aioredis.Redis
) -> None:
    runtime = runtime_with(settings, redis, [SessionInfo(7, ())])
    with pytest.raises(WarblerError) as raised:
        await runtime.call("conv:1", GetInfo(7))
    assert raised.value.code == ErrorCode.INTERNAL
    assert "GetInfo was answered with SessionInfo, not ConversationInfo" in raised.value.message


async def test_call_many_checks_each_answer_in_place(
    settings: Settings, redis: aioredis.Redis
) -> None:
    session = SessionInfo(7, ())
    runtime = runtime_with(settings, redis, [INFO, INFO, session])
    calls = [("conv:1", GetInfo(7)), ("user:7", GetSession()), ("user:7", GetSession())]
    first, wrong, right = await runtime.call_many(calls)
    assert first is INFO and right is session
    assert isinstance(wrong, WarblerError) and wrong.code == ErrorCode.INTERNAL
