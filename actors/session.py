"""The user-session entity ("user:<id>"): a user's connected devices and their presence.

The gateway tells it when a device connects to or disconnects from a replica, and touches it
periodically while the socket lives; presence in Redis expires ``PRESENCE_TTL_S`` after the last
touch, so a replica that dies without saying goodbye stops counting as online. The session
forgets such devices the same way: one not touched for ``PRESENCE_TTL_S`` is dropped at the
session's next message, so its state (answered to every hello, checkpointed on every change)
holds the live devices only and cannot grow with every socket a dead replica left behind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from actors.codec import pack, unpack
from actors.context import EntityContext
from actors.entity import Entity, handles
from actors.messages import ConnectDevice, DeviceInfo, DisconnectDevice, GetSession, SessionInfo
from actors.names import USER, parse_key
from warbler.errors import ErrorCode, WarblerError

PRESENCE_TTL_S = 90.0
_DEVICE_ID_MAX = 64
# 1: [1, user id, [(device, replica)], version]; 2 adds each device's last touch (epoch s).
_STATE_FORMAT = 2


@dataclass(slots=True)
class SessionState:
    """A user's devices (device id -> gateway replica id, in connection order) and when each
    was last connected or renewed (wall-clock seconds). ``version`` counts changes: it is the
    checkpoint's version."""

    user_id: int
    devices: dict[str, str] = field(default_factory=dict)
    version: int = 0
    seen: dict[str, float] = field(default_factory=dict)

    def dump(self) -> bytes:
        """Compact msgpack."""
        rows = [(d, r, self.seen.get(d, 0.0)) for d, r in self.devices.items()]
        return pack([_STATE_FORMAT, self.user_id, rows, self.version])

    @classmethod
    def load(cls, data: bytes, *, now: float | None = None) -> SessionState:
        """Parse what ``dump`` wrote (format 1 too: its devices count as seen ``now``)."""
        fmt, user_id, rows, version = unpack(data)
        if fmt == 1:
            at = time.time() if now is None else now
            return cls(user_id, dict(rows), version, {d: at for d, _ in rows})
        if fmt != _STATE_FORMAT:
            raise WarblerError(ErrorCode.INTERNAL, f"unknown session state format {fmt}")
        return cls(
            user_id, {d: r for d, r, _ in rows}, version, {d: float(t) for d, _, t in rows}
        )

    def forget_stale(self, now: float) -> int:
        """Drop devices not touched for PRESENCE_TTL_S (their replica died without a
        DisconnectDevice); returns how many."""
        cutoff = now - PRESENCE_TTL_S
        stale = [d for d in self.devices if self.seen.get(d, 0.0) < cutoff]
        for d in stale:
            del self.devices[d]
            self.seen.pop(d, None)
        return len(stale)


def _check_ids(device_id: str, replica_id: str) -> None:
    for name, value in (("device_id", device_id), ("replica_id", replica_id)):
        if not 1 <= len(value) <= _DEVICE_ID_MAX:
            raise WarblerError(
                ErrorCode.VALIDATION, f"{name} must be 1-{_DEVICE_ID_MAX} characters"
            )


class UserSessionEntity(Entity[SessionState]):
    """Device registry and presence of one user."""

    kind = USER
    __slots__ = ()

    @classmethod
    async def restore(
        cls, key: str, ctx: EntityContext, checkpoint: tuple[int, bytes] | None
    ) -> UserSessionEntity:
        """From the checkpoint, or empty (a session has no log to replay)."""
        _, user_id = parse_key(key)
        state = SessionState.load(checkpoint[1]) if checkpoint else SessionState(user_id)
        return cls(key, ctx, state)

    def snapshot(self) -> tuple[int, bytes]:
        """Version = number of changes so far."""
        return self.state.version, self.state.dump()

    def _info(self) -> SessionInfo:
        s = self.state
        return SessionInfo(s.user_id, tuple(DeviceInfo(d, r) for d, r in s.devices.items()))

    def _changed(self) -> None:
        self.state.version += 1
        self.changes += 1

    def _forget_stale(self) -> None:
        if self.state.forget_stale(time.time()):
            self._changed()

    @handles(ConnectDevice)
    async def connect(self, msg: ConnectDevice) -> SessionInfo:
        """Register (or move) a device and mark it online. Sent again as a keepalive."""
        _check_ids(msg.device_id, msg.replica_id)
        s = self.state
        self._forget_stale()
        # A renewal only moves the touch time: not a change worth a checkpoint of its own.
        s.seen[msg.device_id] = time.time()
        if s.devices.get(msg.device_id) != msg.replica_id:
            s.devices.pop(msg.device_id, None)
            s.devices[msg.device_id] = msg.replica_id
            self._changed()
        await self.ctx.presence.set_device(s.user_id, msg.device_id, msg.replica_id, PRESENCE_TTL_S)
        return self._info()

    @handles(DisconnectDevice)
    async def disconnect(self, msg: DisconnectDevice) -> SessionInfo:
        """Drop a device, unless it has since connected to another replica."""
        _check_ids(msg.device_id, msg.replica_id)
        s = self.state
        self._forget_stale()
        if s.devices.get(msg.device_id) == msg.replica_id:
            del s.devices[msg.device_id]
            s.seen.pop(msg.device_id, None)
            self._changed()
            await self.ctx.presence.drop_device(s.user_id, msg.device_id)
        return self._info()

    @handles(GetSession)
    def get_session(self, msg: GetSession) -> SessionInfo:
        """The connected devices."""
        self._forget_stale()
        return self._info()
