"""Exponential backoff with full jitter for reconnects and retried requests."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays that double from ``base_s`` up to ``max_s``, each drawn uniformly in ``[0, cap]``.

    Full jitter (AWS architecture blog, "Exponential Backoff and Jitter") spreads the reconnects
    of many clients that lost the same gateway replica at the same instant, so they do not stampede
    the survivors in lockstep.

    Example::

        backoff = Backoff(base_s=0.2, max_s=10.0)
        while True:
            try:
                await connect()
                backoff.reset()
                break
            except OSError:
                await asyncio.sleep(backoff.next_delay())
    """

    base_s: float = 0.2
    max_s: float = 10.0
    factor: float = 2.0
    attempts: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def cap(self) -> float:
        """The upper bound of the next delay (before jitter)."""
        # min() before the power would overflow after ~1000 attempts; cap the exponent instead.
        exponent = min(self.attempts, 64)
        return float(min(self.max_s, self.base_s * self.factor**exponent))

    def next_delay(self) -> float:
        """The delay before the next attempt; counts the attempt."""
        delay = self.rng.uniform(0.0, self.cap())
        self.attempts += 1
        return delay

    def reset(self) -> None:
        """Forget past failures (call after a connection that worked)."""
        self.attempts = 0
