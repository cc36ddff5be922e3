"""Fixtures for the client tests: the base URL of a real gateway.

``WARBLER_TEST_GATEWAY_URL`` points the tests at a gateway that is already running (``warbler
up``); without it they use the session ``gateway`` fixture, a Serve deployment of the real app on
the session Ray cluster.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def gateway_url(request: pytest.FixtureRequest) -> str:
    """The gateway's HTTP base URL, e.g. ``http://127.0.0.1:8000``."""
    url = os.environ.get("WARBLER_TEST_GATEWAY_URL")
    if url:
        return url.rstrip("/")
    gateway = request.getfixturevalue("gateway")
    return str(gateway.url).rstrip("/")
