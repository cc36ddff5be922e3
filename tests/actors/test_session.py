"""The user-session entity: devices, presence, checkpoints (no Ray)."""

from __future__ import annotations

import pytest
from actor_helpers import MakeUser, ask

from actors.context import EntityContext
from actors.messages import ConnectDevice, DisconnectDevice, GetSession, SessionInfo
from actors.names import user_key
from actors.session import UserSessionEntity
from warbler.errors import ErrorCode, WarblerError


async def test_devices_and_presence(ctx: EntityContext, make_user: MakeUser) -> None:
    user = await make_user("u")
    session = await UserSessionEntity.restore(user_key(user.id), ctx, None)
    info = await ask(session, ConnectDevice("phone", "r1"))
    await ask(session, ConnectDevice("laptop", "r2"))
    assert isinstance(info, SessionInfo) and info.online
    assert await ctx.presence.devices(user.id) == {"phone": "r1", "laptop": "r2"}
    assert user.id in await ctx.presence.online_users([user.id])

    # The phone reconnects through r3; r1's late disconnect must not log it out.
    await ask(session, ConnectDevice("phone", "r3"))
    info = await ask(session, DisconnectDevice("phone", "r1"))
    assert [(d.device_id, d.replica_id) for d in info.devices] == [
        ("laptop", "r2"),
        ("phone", "r3"),
    ]
    await ask(session, DisconnectDevice("phone", "r3"))
    info = await ask(session, DisconnectDevice("laptop", "r2"))
    assert not info.online
    assert user.id not in await ctx.presence.online_users([user.id])


async def test_session_state_survives_a_checkpoint(ctx: EntityContext, make_user: MakeUser) -> None:
    user = await make_user("u")
    session = await UserSessionEntity.restore(user_key(user.id), ctx, None)
    await ask(session, ConnectDevice("phone", "r1"))
    version, state = session.snapshot()
    assert version == 1
    again = await UserSessionEntity.restore(user_key(user.id), ctx, (version, state))
    info = await ask(again, GetSession())
    assert [(d.device_id, d.replica_id) for d in info.devices] == [("phone", "r1")]


async def test_bad_device_ids_are_refused(ctx: EntityContext, make_user: MakeUser) -> None:
    user = await make_user("u")
    session = await UserSessionEntity.restore(user_key(user.id), ctx, None)
    for bad in (ConnectDevice("", "r1"), ConnectDevice("x" * 65, "r1"), ConnectDevice("d", "")):
        with pytest.raises(WarblerError) as err:
            await ask(session, bad)
        assert err.value.code == ErrorCode.VALIDATION
    assert session.state.devices == {} and session.changes == 0
