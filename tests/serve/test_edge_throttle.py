"""Login and registration throttling over real Redis (no Ray): per account, per address,
shared by every replica (two throttles on one Redis are two replicas), and the client address
behind trusted proxies."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from serve.ingress import free_port
from serve.ratelimit import AbuseThrottle, client_address
from storage import Keys, ThrottleCache
from warbler.config import Settings
from warbler.errors import ErrorCode, WarblerError


def _throttle(redis: aioredis.Redis, uid: str, **limits: object) -> AbuseThrottle:
    settings = Settings(namespace=f"th{uid}", **limits)  # type: ignore[arg-type]
    return AbuseThrottle(ThrottleCache(redis, Keys(settings.namespace)), settings)


async def test_failed_logins_lock_the_account_on_every_replica(
    redis: aioredis.Redis, uid: str
) -> None:
    a = _throttle(redis, uid, login_failures_per_account=3)
    b = _throttle(redis, uid, login_failures_per_account=3)
    for replica in (a, b, a):
        await replica.check_login("Alice", "203.0.113.9")
        await replica.login_failed("Alice", "203.0.113.9")
    with pytest.raises(WarblerError) as caught:
        await b.check_login("alice", "198.51.100.1")  # another address, same account
    assert caught.value.code == ErrorCode.RATE_LIMITED
    assert 1000 <= caught.value.details["retry_after_ms"] <= 300_000
    await a.check_login("bob", "203.0.113.9")  # other accounts are not locked
    await a.login_succeeded("alice")
    await b.check_login("alice", "203.0.113.9")


async def test_failed_logins_lock_the_address_but_not_loopback(
    redis: aioredis.Redis, uid: str
) -> None:
    t = _throttle(redis, uid, login_failures_per_account=0, login_failures_per_ip=5)
    for i in range(5):
        await t.login_failed(f"user{i}", "203.0.113.7")
        await t.login_failed(f"user{i}", "127.0.0.1")
    with pytest.raises(WarblerError):
        await t.check_login("someone-else", "203.0.113.7")
    await t.check_login("someone-else", "127.0.0.1")  # exempt (settings.throttle_exempt_ips)
    await t.check_login("someone-else", "203.0.113.8")


async def test_registrations_are_limited_per_address(redis: aioredis.Redis, uid: str) -> None:
    t = _throttle(redis, uid, registrations_per_ip=2)
    await t.check_registration("203.0.113.5")
    await t.check_registration("203.0.113.5")
    with pytest.raises(WarblerError) as caught:
        await t.check_registration("203.0.113.5")
    assert caught.value.status == 429
    await t.check_registration("203.0.113.6")
    for _ in range(5):
        await t.check_registration("::1")


def test_client_address_believes_only_trusted_proxies() -> None:
    assert client_address("203.0.113.1", "6.6.6.6", trusted=[]) == "203.0.113.1"
    assert client_address("203.0.113.1", "6.6.6.6", trusted=["10.0.0.2"]) == "203.0.113.1"
    # Behind our proxy: the nearest hop it did not add; a forged left part is ignored.
    assert client_address("10.0.0.2", "6.6.6.6, 198.51.100.4", ["10.0.0.2"]) == "198.51.100.4"
    assert (
        client_address("10.0.0.2", "198.51.100.4, 10.0.0.3", ["10.0.0.2", "10.0.0.3"])
        == "198.51.100.4"
    )
    assert client_address(None, None, []) == "unknown"


async def test_the_throttle_fails_open_when_redis_is_down(uid: str) -> None:
    # A real client on a port nobody listens on: every command fails to connect.
    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1.0)
    try:
        t = _throttle(dead, uid, login_failures_per_account=1, registrations_per_ip=1)
        for _ in range(3):
            await t.check_login("alice", "203.0.113.9")
            await t.login_failed("alice", "203.0.113.9")
            await t.check_registration("203.0.113.9")
        await t.login_succeeded("alice")
    finally:
        await dead.aclose()
