"""One logger setup for every Warbler process, and the context carried through a request.

``setup_logging(settings, component)`` is called once by each entry point (the CLI, each host
actor, each gateway replica): JSON lines (``WARBLER_LOG_FORMAT=json``, the default) or plain
text, on stderr, which Ray keeps per worker under ``/tmp/ray/session_*/logs``. Each JSON line
holds ``ts``, ``level``, ``logger``, ``msg``, ``component``, the fields of the current context
(``bind`` / ``context``: ``request_id``, ``client_msg_id``, ``conversation_id``, ``socket``...),
any ``extra=`` fields, and ``exc`` for a traceback.

The context lives in a ``contextvars.ContextVar``: a task inherits it from the code that made
it, so the fields bound for one WebSocket frame follow it into the coalescer; on the host they
are bound again from the message itself (an ``Append`` already carries ``client_msg_id`` and
its key names the conversation), so nothing extra travels per message in the Ray batch.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from warbler.config import Settings

_CONTEXT: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "warbler_log_context", default=MappingProxyType({})
)
# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_COMPONENT = {"name": "warbler"}


def bind(**fields: Any) -> contextvars.Token[Mapping[str, Any]]:
    """Add fields to the current context (until ``unbind(token)`` or the task ends)."""
    return _CONTEXT.set({**_CONTEXT.get(), **fields})


def unbind(token: contextvars.Token[Mapping[str, Any]]) -> None:
    """Undo one ``bind``."""
    _CONTEXT.reset(token)


@contextlib.contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Fields bound for the duration of a block."""
    token = bind(**fields)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current() -> dict[str, Any]:
    """The fields bound now."""
    return dict(_CONTEXT.get())


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "component": _COMPONENT["name"],
        }
        entry.update(_CONTEXT.get())
        for key, value in vars(record).items():
            # Ray adds private attributes (``_ray_timestamp_ns``): not ours to print.
            if key not in _STANDARD and key not in entry and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``ts level logger: msg key=value ...`` (the context at the end)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _CONTEXT.get()
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


class _OurHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installed, so a second setup replaces it."""


def setup_logging(settings: Settings, component: str) -> None:
    """Configure the root logger of this process (idempotent: the last call wins)."""
    _COMPONENT["name"] = component
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _OurHandler):
            root.removeHandler(handler)
    handler = _OurHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())


__all__ = ["JsonFormatter", "bind", "context", "current", "setup_logging", "unbind"]
