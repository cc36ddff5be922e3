"""The entity model: a plain Python class over one state dataclass, with typed handlers.

Ray never appears here. An entity kind subclasses ``Entity``, marks its handlers with
``@handles(MessageType)``, and implements ``restore`` (build from a checkpoint, or from scratch)
and ``snapshot`` (version and bytes for the next checkpoint). The host gives each entity a
mailbox: its handlers run one at a time, in arrival order.

A handler that must not hold the mailbox while it waits (an append waiting for its group
commit) returns ``Later(awaitable)``: the mailbox moves on at once and the caller's reply
resolves when the awaitable does.

Every message is a ``Request[R]`` (``actors.messages``); its handler returns ``R``, a
``Later[R]``, or (``async def``) a coroutine of ``R``, and mypy checks that at ``@handles``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, Generic, TypeAlias, TypeVar

from actors.context import EntityContext
from actors.messages import Request
from warbler.errors import ErrorCode, WarblerError

S = TypeVar("S")
M = TypeVar("M")
R = TypeVar("R")
E = TypeVar("E", bound="Entity[Any]")

_HANDLES_ATTR = "__warbler_handles__"


class Later(Generic[R]):
    """A reply that completes after the mailbox has moved on (see the module docstring).

    A coroutine is scheduled as a task right away, so work it queues (a draft handed to the
    group-commit writer) is queued in mailbox order. A future is taken as it is (no task): the
    cheap form for a handler that has already queued its work.
    """

    __slots__ = ("task",)

    def __init__(self, work: Coroutine[Any, Any, R] | asyncio.Future[R]) -> None:
        self.task: asyncio.Future[R] = asyncio.ensure_future(work)


# What a handler of a Request[R] returns: the reply, a Later of it, or (async def) a
# coroutine of it.
Handled: TypeAlias = R | Later[R] | Coroutine[Any, Any, R]


def handles(
    message_type: type[Request[R]],
) -> Callable[[Callable[[E, M], Handled[R]]], Callable[[E, M], Handled[R]]]:
    """Mark a method as the handler of ``message_type`` messages; mypy checks that it returns
    the reply type the message declares.

    A plain ``def`` handler must not wait for anything: it validates, changes state and
    answers (or returns ``Later``). The host runs it inline when the mailbox is idle, which
    costs no task. An ``async def`` handler may await; the mailbox runs it in a task.
    """

    def mark(method: Callable[[E, M], Handled[R]]) -> Callable[[E, M], Handled[R]]:
        setattr(method, _HANDLES_ATTR, message_type)
        return method

    return mark


class Entity(Generic[S]):
    """Base of every entity kind. ``changes`` counts state changes since activation; the host
    compares it with what it last checkpointed."""

    kind: ClassVar[str]
    # True for kinds whose ``restore`` replays a durable log after the checkpoint: any
    # checkpoint then yields the newest state, so the host may skip reading the second copy.
    replays_log: ClassVar[bool] = False
    _handlers: ClassVar[dict[type, Callable[[Any, Any], Any]]] = {}
    _inline: ClassVar[frozenset[type]] = frozenset()

    __slots__ = ("key", "ctx", "state", "changes")

    def __init__(self, key: str, ctx: EntityContext, state: S) -> None:
        self.key = key
        self.ctx = ctx
        self.state = state
        self.changes = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table = dict(cls._handlers)
        for value in vars(cls).values():
            message_type = getattr(value, _HANDLES_ATTR, None)
            if message_type is not None:
                table[message_type] = value
        cls._handlers = table
        cls._inline = frozenset(t for t, h in table.items() if not inspect.iscoroutinefunction(h))

    @classmethod
    def handled_types(cls) -> frozenset[type]:
        """The message types this kind answers."""
        return frozenset(cls._handlers)

    def handles_inline(self, message: Request[Any]) -> bool:
        """True if ``message``'s handler is a plain function (it never waits)."""
        return type(message) in self._inline

    def handle_inline(self, message: Request[R]) -> R | Later[R]:
        """Run a plain-function handler (see ``handles_inline``)."""
        result: R | Later[R] = self._handlers[type(message)](self, message)
        return result

    async def handle(self, message: Request[R]) -> R | Later[R]:
        """Run the handler of ``message``'s type (UNSUPPORTED if there is none)."""
        handler = self._handlers.get(type(message))
        if handler is None:
            raise WarblerError(
                ErrorCode.UNSUPPORTED,
                f"{self.kind} entities do not handle {type(message).__name__}",
            )
        result: Handled[R] = handler(self, message)
        if inspect.isawaitable(result):
            return await result
        return result

    # --- lifecycle, overridden by each kind ------------------------------------------------

    @classmethod
    async def restore(
        cls: type[E], key: str, ctx: EntityContext, checkpoint: tuple[int, bytes] | None
    ) -> E:
        """Build the entity from its newest checkpoint (or from scratch when None), then bring
        it up to date (e.g. replay the log after the checkpoint)."""
        raise NotImplementedError

    def snapshot(self) -> tuple[int, bytes]:
        """``(version, state bytes)`` of the state as committed so far."""
        raise NotImplementedError

    async def on_activate(self) -> None:
        """Called once after ``restore``, before the first message."""

    async def on_passivate(self) -> None:
        """Called once before the final checkpoint, after the last message."""
