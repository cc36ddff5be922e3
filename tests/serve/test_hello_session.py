"""A hello registers its device with the user's session; the session must not keep devices
that are gone: closed sockets leave it (through the real gateway), and devices whose replica
died without a goodbye are forgotten after the presence TTL (entity state, no Ray)."""

from __future__ import annotations

import asyncio

import httpx
import redis.asyncio as aioredis

from actors.codec import pack
from actors.session import PRESENCE_TTL_S, SessionState
from storage import Keys, PresenceCache
from tests.serve.gwclient import connect, make_account
from tests.support import GatewayInfo
from warbler.config import Settings


def test_session_state_forgets_devices_not_renewed_within_the_ttl() -> None:
    state = SessionState(7)
    state.devices = {"old": "r1", "fresh": "r2"}
    state.seen = {"old": 1000.0, "fresh": 1000.0 + PRESENCE_TTL_S}
    assert state.forget_stale(1000.0 + PRESENCE_TTL_S + 1) == 1
    assert state.devices == {"fresh": "r2"}
    again = SessionState.load(state.dump())
    assert again.devices == {"fresh": "r2"} and again.seen == {"fresh": 1000.0 + PRESENCE_TTL_S}
    # A checkpoint of the first format: its devices count as seen when loaded.
    old = SessionState.load(pack([1, 7, [("a", "r1"), ("b", "r2")], 4]), now=50.0)
    assert old.devices == {"a": "r1", "b": "r2"} and old.version == 4
    assert old.seen == {"a": 50.0, "b": 50.0}
    assert old.forget_stale(50.0 + PRESENCE_TTL_S) == 0


async def test_sockets_closed_at_once_leave_the_session(
    http: httpx.AsyncClient, gateway: GatewayInfo, redis: aioredis.Redis, settings: Settings
) -> None:
    user = await make_account(http, "many")
    presence = PresenceCache(redis, Keys(settings.namespace))
    opened = await asyncio.gather(
        *(connect(gateway.ws_url, user, device_id=f"dev{i}") for i in range(40))
    )
    socks = [s for s, _ in opened]
    for _ in range(200):
        if len(await presence.devices(user.user_id)) == len(socks):
            break
        await asyncio.sleep(0.05)
    assert len(await presence.devices(user.user_id)) == len(socks)
    await asyncio.gather(*(s.close() for s in socks))
    # Every socket's DisconnectDevice arrives (the cleanup is not lost to the cancellation
    # Serve sends when it sees the client leave).
    left: dict[str, str] = {}
    for _ in range(300):
        left = await presence.devices(user.user_id)
        if not left:
            break
        await asyncio.sleep(0.05)
    assert left == {}
