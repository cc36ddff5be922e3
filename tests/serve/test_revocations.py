"""Logout kills access tokens at once, on every replica: the in-memory revocation view kept
from Redis (unit, real Redis, no Ray), and logout over the real gateway (sockets closed 4403,
REST refused, other sessions untouched)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable

import httpx
import pytest
import redis.asyncio as aioredis
import websockets
from gwclient import Account, connect, make_account

from serve.revocations import Revocation, Revocations
from serve.tokens import AccessClaims
from storage import Keys
from tests.support import GatewayInfo
from warbler.protocol import CloseCode

WAIT_S = 20.0  # a bound on pub/sub delivery, not a performance assertion


async def _until(check: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not within {WAIT_S}s")


def claims(user_id: int, session_id: str, issued_at: int = 100) -> AccessClaims:
    return AccessClaims(user_id, session_id, issued_at, issued_at + 900)


def test_a_revocation_concerns_its_session_or_the_users_older_tokens() -> None:
    session = Revocation(7, session_id="s1")
    assert session.concerns(7, "s1", 100) and not session.concerns(7, "s2", 100)
    assert not session.concerns(8, "s1", 100)
    everywhere = Revocation(7, before=100)
    assert everywhere.concerns(7, "any", 99) and not everywhere.concerns(7, "any", 100)
    assert Revocation.decode(everywhere.encode()) == everywhere
    assert Revocation.decode(b"not json") is None


async def test_every_replica_learns_a_revocation(redis: aioredis.Redis, uid: str) -> None:
    keys = Keys(f"rv{uid}")
    seen: list[Revocation] = []
    a = Revocations(redis, keys, ttl_s=60)
    b = Revocations(redis, keys, ttl_s=60, on_revoked=seen.append)
    await a.start()
    await b.start()
    try:
        await a.revoke(Revocation(7, session_id="s1"))
        assert a.is_revoked(claims(7, "s1"))  # at once where it was revoked
        await _until(lambda: b.is_revoked(claims(7, "s1")), "replica b hears the logout")
        assert not b.is_revoked(claims(7, "s2")) and not b.is_revoked(claims(8, "s1"))
        await a.revoke(Revocation(7, before=200))
        await _until(lambda: b.is_revoked(claims(7, "s2", issued_at=199)), "logout everywhere")
        assert not b.is_revoked(claims(7, "s2", issued_at=200))  # a login after it
        assert seen == [Revocation(7, session_id="s1"), Revocation(7, before=200)]
        # A replica that starts later loads both from Redis.
        c = Revocations(redis, keys, ttl_s=60)
        await c.start()
        try:
            assert c.is_revoked(claims(7, "s1")) and c.is_revoked(claims(7, "x", 150))
        finally:
            await c.close()
        # A resync re-reads without calling back again for what it knew.
        await b.resync()
        assert len(seen) == 2
    finally:
        await a.close()
        await b.close()


async def test_revocations_redis_lost_are_written_back(redis: aioredis.Redis, uid: str) -> None:
    """A Redis restarted empty forgot every logout: the live replicas still hold them and
    write them back (at the next resync, or when the bus returns), so a replica that starts
    afterwards still refuses those sessions' tokens."""
    keys = Keys(f"rv{uid}")
    a = Revocations(redis, keys, ttl_s=60)
    await a.start()
    try:
        await a.revoke(Revocation(7, session_id="s1"))
        await a.revoke(Revocation(8, before=200))
        # What a restart without persistence does to this namespace (not FLUSHALL: the server
        # is shared with other tests).
        lost = [k async for k in redis.scan_iter(match=keys.revocations_pattern())]
        assert len(lost) == 2
        await redis.delete(*lost)
        await a.resync()
        assert 50 <= await redis.ttl(keys.revoked_session("s1")) <= 60  # its remaining lifetime
        c = Revocations(redis, keys, ttl_s=60)
        await c.start()
        try:
            assert c.is_revoked(claims(7, "s1")) and c.is_revoked(claims(8, "x", 150))
            assert not c.is_revoked(claims(8, "x", 200))
        finally:
            await c.close()
    finally:
        await a.close()


async def test_a_revocation_lasts_as_long_as_the_tokens_it_concerns(
    redis: aioredis.Redis, uid: str
) -> None:
    keys = Keys(f"rv{uid}")
    short = Revocations(redis, keys, ttl_s=1)
    await short.start()
    try:
        await short.revoke(Revocation(9, session_id="s"))
        assert short.is_revoked(claims(9, "s"))
        assert 0 < await redis.ttl(keys.revoked_session("s")) <= 1
        # Every token of that session has expired by now: the entry goes too.
        await _until(lambda: not short.is_revoked(claims(9, "s")), "the entry expires")
    finally:
        await short.close()


# --- through the gateway ---------------------------------------------------------------------


async def _login(http: httpx.AsyncClient, username: str) -> Account:
    r = await http.post(
        "/v1/auth/login", json={"username": username, "password": "correct horse battery"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    return Account(body["user"]["id"], username, body["access_token"], body["refresh_token"])


@pytest.mark.ray
async def test_logout_closes_the_sessions_sockets_and_refuses_its_token(
    http: httpx.AsyncClient, gateway: GatewayInfo
) -> None:
    phone = await make_account(http, f"rv{uuid.uuid4().hex[:6]}")
    laptop = await _login(http, phone.username)
    phone_sock, _ = await connect(gateway.ws_url, phone, device_id="phone")
    laptop_sock, _ = await connect(gateway.ws_url, laptop, device_id="laptop")
    try:
        # Log the phone out: its socket closes with 4403 and its token stops working at once.
        r = await http.post("/v1/auth/logout", json={}, headers=phone.headers)
        assert r.status_code == 204
        await asyncio.wait_for(phone_sock.closed.wait(), WAIT_S)
        assert phone_sock.close_code == CloseCode.REVOKED

        async def phone_refused() -> bool:
            # Every replica, whichever serves the request.
            codes = {(await http.get("/v1/users/me", headers=phone.headers)).status_code
                     for _ in range(6)}
            return codes == {401}

        await _until(phone_refused, "the phone's token refused everywhere")
        # The laptop's session is another one: untouched.
        assert (await http.get("/v1/users/me", headers=laptop.headers)).status_code == 200
        assert not laptop_sock.closed.is_set()
        # A new socket with the revoked token is refused at hello.
        async with websockets.connect(gateway.ws_url) as ws:
            await ws.send(json.dumps({"type": "hello", "id": 1, "token": phone.access_token}))
            answer = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
            assert answer["type"] == "error" and answer["code"] == "unauthenticated", answer
            await asyncio.wait_for(ws.wait_closed(), WAIT_S)
            assert ws.close_code == CloseCode.UNAUTHENTICATED

        # Log out everywhere: the laptop goes too; a new login right after works.
        r = await http.post("/v1/auth/logout", json={"all_devices": True}, headers=laptop.headers)
        assert r.status_code == 204
        await asyncio.wait_for(laptop_sock.closed.wait(), WAIT_S)
        assert laptop_sock.close_code == CloseCode.REVOKED
        assert (await http.get("/v1/users/me", headers=laptop.headers)).status_code == 401
        again = await _login(http, phone.username)
        assert (await http.get("/v1/users/me", headers=again.headers)).status_code == 200
    finally:
        await phone_sock.close()
        await laptop_sock.close()
