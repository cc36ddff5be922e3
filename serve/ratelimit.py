"""Rate limits of the edge. Per-user send rate limit: a token bucket per user, in the gateway
replica's memory (login and registration limits, at the end, use Redis counters instead).

Why in memory and not Redis: a Redis call per send would put a network round trip on the hot
path of every message. Why it still holds across replicas: a user whose devices sit on N
replicas gets 1/N of the rate and burst on each (``set_share``, fed from the user's session,
which lists every device and its replica, at each hello and every presence renewal), so the
user's total stays at the configured rate. The cost: a user typing on one of two connected
devices gets half the rate until the other device leaves. Idle buckets are dropped so memory
stays bounded by active senders.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Sequence

from redis.exceptions import RedisError

from storage.throttle import ThrottleCache
from warbler.config import Settings
from warbler.errors import ErrorCode, WarblerError

logger = logging.getLogger(__name__)
# What a Redis outage raises: the client's own errors, or the socket's.
_REDIS_DOWN = (RedisError, OSError)


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


def client_address(peer: str | None, forwarded_for: str | None, trusted: Sequence[str]) -> str:
    """The client's address: the socket peer, or, when the peer is a trusted proxy, the
    nearest address in X-Forwarded-For that is not one of our proxies (the rightmost entries
    are the ones our own proxies added, so a client cannot forge them)."""
    address = peer or "unknown"
    if forwarded_for and address in trusted:
        for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
            if hop and hop not in trusted:
                return hop[:64]
    return address


def _retry_after(seconds: float, what: str) -> WarblerError:
    wait_ms = max(1000, math.ceil(seconds) * 1000)
    return WarblerError(
        ErrorCode.RATE_LIMITED,
        f"too many {what}; retry in {wait_ms // 1000} s",
        details={"retry_after_ms": wait_ms},
    )


class AbuseThrottle:
    """Login and registration limits over Redis counters (storage.ThrottleCache), shared by
    every replica: failed logins per account and per address, registrations per address.

    With Redis unreachable the limits fail open (logged): logins keep working, guarded by the
    password check alone, rather than every login answering an error."""

    def __init__(self, cache: ThrottleCache, settings: Settings) -> None:
        self._cache = cache
        self._s = settings
        self._exempt = frozenset(settings.throttle_exempt_ips)

    def _login_keys(self, username: str, address: str) -> list[tuple[str, int]]:
        s = self._s
        keys = [(f"login:acct:{username.lower()}", s.login_failures_per_account)]
        if address not in self._exempt:
            keys.append((f"login:ip:{address}", s.login_failures_per_ip))
        return [(name, limit) for name, limit in keys if limit > 0]

    async def check_login(self, username: str, address: str) -> None:
        """RATE_LIMITED (429) while the account or the address has too many recent failures."""
        keys = self._login_keys(username, address)
        try:
            counts = await self._cache.peek([name for name, _ in keys])
        except _REDIS_DOWN:
            logger.warning("login throttle unavailable (Redis); not limiting", exc_info=True)
            return
        for (_, limit), (count, left_s) in zip(keys, counts, strict=True):
            if count >= limit:
                raise _retry_after(left_s, "failed logins")

    async def login_failed(self, username: str, address: str) -> None:
        """Count a failed login against the account and the address."""
        try:
            for name, _ in self._login_keys(username, address):
                await self._cache.hit(name, self._s.login_failure_window_s)
        except _REDIS_DOWN:
            logger.warning("login throttle unavailable (Redis); failure not counted")

    async def login_succeeded(self, username: str) -> None:
        """The account's failures are forgotten (its owner knows the password)."""
        try:
            await self._cache.reset(f"login:acct:{username.lower()}")
        except _REDIS_DOWN:
            logger.warning("login throttle unavailable (Redis); failures not cleared")

    async def check_registration(self, address: str) -> None:
        """Count a registration from the address; RATE_LIMITED when over the limit."""
        limit = self._s.registrations_per_ip
        if limit <= 0 or address in self._exempt:
            return
        try:
            count, left_s = await self._cache.hit(
                f"register:ip:{address}", self._s.registration_window_s
            )
        except _REDIS_DOWN:
            logger.warning("registration throttle unavailable (Redis); not limiting")
            return
        if count > limit:
            raise _retry_after(left_s, "registrations from this address")
