"""Warbler: shared configuration, errors and wire protocol for every layer."""

from warbler.config import Settings
from warbler.errors import ErrorCode, WarblerError

__all__ = ["ErrorCode", "Settings", "WarblerError"]
