"""Per-user send rate limit: a token bucket per user, in the gateway replica's memory.

Why in memory and not Redis: a Redis call per send would put a network round trip on the hot
path of every message. A user's devices usually land on one or two replicas, so the effective
limit is at most (replicas the user is connected to) x the configured rate, which is what a
flood limit needs. Idle buckets are dropped so memory stays bounded by active senders.
"""

from __future__ import annotations

import time
from collections import OrderedDict


class SendRateLimiter:
    """Token buckets keyed by user id: ``rate_per_s`` tokens a second, up to ``burst``."""

    def __init__(self, rate_per_s: float, burst: int, max_users: int = 100_000) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._max_users = max_users
        # user id -> (tokens, time of last refill); ordered by last use for eviction.
        self._buckets: OrderedDict[int, tuple[float, float]] = OrderedDict()

    def try_take(self, user_id: int, cost: float = 1.0, *, now: float | None = None) -> float:
        """Take ``cost`` tokens. Returns 0.0 when allowed, else the seconds until it would be."""
        t = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(user_id, (self._burst, t))
        tokens = min(self._burst, tokens + (t - last) * self._rate)
        if tokens >= cost:
            self._buckets[user_id] = (tokens - cost, t)
            wait = 0.0
        else:
            self._buckets[user_id] = (tokens, t)
            wait = (cost - tokens) / self._rate if self._rate > 0 else float("inf")
        while len(self._buckets) > self._max_users:
            self._buckets.popitem(last=False)
        return wait
