"""Entity interfaces: every message declares its reply type, and every handler answers it."""

from __future__ import annotations

import pickle
import typing
from typing import Any

import pytest

from actors import bot_messages, messages
from actors.entity import Later
from actors.host import KINDS
from actors.messages import Append, MessageEvent, ReadLog, Request

MESSAGE_TYPES = [
    value
    for module in (messages, bot_messages)
    for value in vars(module).values()
    if isinstance(value, type) and issubclass(value, Request) and value is not Request
]


def test_every_message_declares_a_class_as_its_reply() -> None:
    assert len(MESSAGE_TYPES) == 20
    for message_type in MESSAGE_TYPES:
        assert isinstance(message_type.reply_type, type), message_type
    assert Append.reply_type is MessageEvent
    assert ReadLog.reply_type is list  # list[MessageEvent]: the items are not checked again


def test_a_request_without_a_reply_type_is_refused() -> None:
    with pytest.raises(TypeError, match="declare its reply type"):

        class Untyped(Request):
            __slots__ = ()

    with pytest.raises(TypeError, match="must be a class"):

        class Maybe(Request[int | None]):
            __slots__ = ()


def test_the_wire_form_is_the_class_and_its_fields() -> None:
    # The reply type lives on the class: nothing more crosses a Ray call than before.
    message = Append(1, "c1", "text", {"text": "hi"})
    assert message.__reduce__() == (Append, (1, "c1", "text", {"text": "hi"}))
    assert pickle.loads(pickle.dumps(message)) == message
    assert not hasattr(message, "__dict__")


def _reply_of(annotation: Any) -> Any:
    # A handler is annotated R or Later[R] (an async def's annotation is its R already).
    if typing.get_origin(annotation) is Later:
        (reply,) = typing.get_args(annotation)
        return reply
    return annotation


def test_every_handler_takes_its_message_and_returns_its_reply() -> None:
    # mypy checks the reply at @handles; this also checks the message parameter, and that
    # every kind's handlers are typed at all.
    handled = set()
    for kind in KINDS.values():
        for message_type, handler in kind._handlers.items():
            hints = typing.get_type_hints(handler)
            reply = hints.pop("return")
            (parameter,) = hints.values()
            assert parameter is message_type, (kind, handler)
            (declared,) = typing.get_args(message_type.__orig_bases__[0])
            assert _reply_of(reply) == declared, (kind, handler)
            handled.add(message_type)
    # conv:new's factory takes CreateGroup and OpenDirect, then redirects them to a handler.
    assert handled == set(MESSAGE_TYPES)


def test_a_pending_turn_keeps_its_send_time_and_old_entries_still_read() -> None:
    from actors.bot_link import turn_from_bytes, turn_to_bytes
    from actors.bot_messages import BotTurn

    turn = BotTurn(7, 3, 11, "can I return it?", "group", (21, 22), 1_790_000_000.25)
    assert turn_from_bytes(turn_to_bytes(turn)) == turn
    # A turn stored by the version before ``sent_at``: six fields, read as "sent when handled".
    old = turn_from_bytes(b'[7,3,11,"can I return it?","group",[21,22]]')
    assert old == BotTurn(7, 3, 11, "can I return it?", "group", (21, 22), 0.0)
