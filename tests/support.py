"""Types the fixtures in tests/conftest.py hand to tests (importable as ``tests.support``)."""

from __future__ import annotations

from dataclasses import dataclass

from warbler.config import Settings


@dataclass(frozen=True)
class GatewayInfo:
    """Where the session's gateway listens."""

    url: str  # HTTP base URL, route prefix included (no trailing slash)
    ws_url: str  # the WebSocket endpoint
    app_name: str
    settings: Settings
