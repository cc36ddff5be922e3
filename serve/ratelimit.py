"""Per-user send rate limit: a token bucket per user, in the gateway replica's memory.

Why in memory and not Redis: a Redis call per send would put a network round trip on the hot
path of every message. Why it still holds across replicas: a user whose devices sit on N
replicas gets 1/N of the rate and burst on each (``set_share``, fed from the user's session,
which lists every device and its replica, at each hello and every presence renewal), so the
user's total stays at the configured rate. The cost: a user typing on one of two connected
devices gets half the rate until the other device leaves. Idle buckets are dropped so memory
stays bounded by active senders.
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
        # user id -> how many replicas hold the user's devices (absent: 1).
        self._shares: dict[int, int] = {}

    def set_share(self, user_id: int, replicas: int) -> None:
        """The user's devices are on ``replicas`` replicas: this one allows its share."""
        if replicas > 1:
            self._shares[user_id] = replicas
        else:
            self._shares.pop(user_id, None)

    def try_take(self, user_id: int, cost: float = 1.0, *, now: float | None = None) -> float:
        """Take ``cost`` tokens. Returns 0.0 when allowed, else the seconds until it would be."""
        t = time.monotonic() if now is None else now
        share = self._shares.get(user_id, 1)
        rate, burst = self._rate / share, max(1.0, self._burst / share)
        tokens, last = self._buckets.pop(user_id, (burst, t))
        tokens = min(burst, tokens + (t - last) * rate)
        if tokens >= cost:
            self._buckets[user_id] = (tokens - cost, t)
            wait = 0.0
        else:
            self._buckets[user_id] = (tokens, t)
            wait = (cost - tokens) / rate if rate > 0 else float("inf")
        while len(self._buckets) > self._max_users:
            evicted, _ = self._buckets.popitem(last=False)
            self._shares.pop(evicted, None)
        return wait
