"""Helpers shared by the actor tests (a module of its own: conftest is not importable)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from actors.entity import Entity, Later
from actors.messages import Request
from storage import User

MakeUser = Callable[[str], Awaitable[User]]
R = TypeVar("R")


async def ask(entity: Entity[Any], message: Request[R]) -> R:
    """Deliver one message straight to an entity (no mailbox) and wait for its answer."""
    result = await entity.handle(message)
    if isinstance(result, Later):
        return await result.task
    return result
