"""Fixtures for the load-test tests: the baseline relay as a real child process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loadtest.servers import Target, relay_target


@pytest.fixture(scope="session")
def relay() -> Iterator[Target]:
    """The baseline relay on a free loopback port, for the whole session."""
    with relay_target() as target:
        yield target
