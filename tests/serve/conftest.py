"""Fixtures for the gateway tests; ``hosts`` and ``gateway`` live in tests/conftest.py, shared
with the client tests (one deployment per session)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support import GatewayInfo


@pytest.fixture
async def http(gateway: GatewayInfo) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the gateway."""
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30.0) as client:
        yield client
