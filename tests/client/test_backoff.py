"""Backoff: doubling caps, full jitter within them, reset."""

from __future__ import annotations

import random

from client.backoff import Backoff


def test_caps_double_up_to_max() -> None:
    backoff = Backoff(base_s=0.5, max_s=4.0, rng=random.Random(1))
    caps = []
    for _ in range(6):
        caps.append(backoff.cap())
        backoff.next_delay()
    assert caps == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_delays_are_jittered_within_cap() -> None:
    backoff = Backoff(base_s=1.0, max_s=1.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(200)]
    assert all(0.0 <= d <= 1.0 for d in delays)
    # Full jitter: spread over the range, not one fixed value.
    assert len({round(d, 3) for d in delays}) > 100


def test_reset_starts_over_and_huge_attempts_do_not_overflow() -> None:
    backoff = Backoff(base_s=0.1, max_s=3.0)
    backoff.attempts = 10_000
    assert backoff.cap() == 3.0
    backoff.reset()
    assert backoff.cap() == 0.1
