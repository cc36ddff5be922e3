"""Fixtures for the client tests: a real gateway to talk to.

``WARBLER_TEST_GATEWAY_URL`` points the tests at a gateway that is already running (``warbler
up``). Without it, they use the session's ``gateway`` (tests/conftest.py): the real app with its
actor hosts on the session Ray cluster, shared with the gateway tests.
"""

from __future__ import annotations

import os

import pytest

from tests.support import GatewayInfo


@pytest.fixture(scope="package")
def gateway_url(request: pytest.FixtureRequest) -> str:
    """The gateway's HTTP base URL, e.g. ``http://127.0.0.1:8000``."""
    url = os.environ.get("WARBLER_TEST_GATEWAY_URL")
    if url:
        return url.rstrip("/")
    gateway: GatewayInfo = request.getfixturevalue("gateway")
    return gateway.url
