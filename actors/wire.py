"""What crosses a Ray call between the runtime and a host (besides the messages themselves).

A batch is ``(epoch, [(key, message), ...])``; the reply is ``(host epoch, [result, ...])`` in
the same order, each result a value, a ``WarblerError`` (that envelope failed, the others did
not), or a ``Redirect``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.messages import Request, _Wire
from warbler.errors import ErrorCode, WarblerError

Envelope = tuple[str, Request[Any]]
BatchReply = tuple[int, list[object]]


@dataclass(frozen=True, slots=True)
class Redirect(_Wire):
    """Deliver ``message`` to ``key`` instead: the answer of the ``"conv:new"`` factory once it
    has created (or found) the conversation. The runtime follows it transparently."""

    key: str
    message: Request[Any]


def stale_epoch(key: str, host: str, epoch: int) -> WarblerError:
    """The answer for an envelope that reached a host which does not serve ``key`` now."""
    return WarblerError(
        ErrorCode.STALE_EPOCH,
        f"host {host} does not serve {key} at epoch {epoch}",
        details={"host": host, "epoch": epoch},
    )
