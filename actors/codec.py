"""Compact state serialization (msgpack, installed with Ray), typed for the rest of the package."""

from __future__ import annotations

from typing import Any

import msgpack  # type: ignore[import-untyped]


def pack(value: Any) -> bytes:
    """msgpack bytes of plain values (lists, ints, strs, ...)."""
    data: bytes = msgpack.packb(value)
    return data


def unpack(data: bytes) -> Any:
    """Inverse of ``pack`` (arrays come back as lists)."""
    return msgpack.unpackb(data)
