"""Logged-out sessions, known to every gateway replica, so their access tokens die at once.

An access token is checked with no I/O (``serve.tokens``) and lives ``access_token_ttl_s``
(15 min). Logging out revokes the refresh token in SQL; without more, the access tokens of
that session kept working until they expired. Here a logout also:

- writes a Redis key per revoked session (and, for "all devices", the user's cut-off time),
  with a TTL of the access-token lifetime: after that no token it concerns is valid anyway;
- publishes it on ``Keys.revocations_channel``: every replica adds it to memory at once, and
  closes the sockets it concerns (close 4403, "session revoked");
- every replica re-reads the keys when it starts and every ``RESYNC_S``, which covers a message
  a replica missed (Redis pub/sub drops what a disconnected listener does not hear).

So ``is_revoked`` is a dict lookup: authenticating a request or a hello stays free of I/O.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from serve.tokens import AccessClaims
from storage import ChannelListener, EventBus, Keys

logger = logging.getLogger(__name__)

# How often a replica re-reads every revocation from Redis (a missed message's worst delay).
RESYNC_S = 10.0


@dataclass(frozen=True, slots=True)
class Revocation:
    """One logout: a session, or (``session_id`` None) every token of the user issued before
    ``before`` (unix seconds; tokens carry whole seconds, compared strictly)."""

    user_id: int
    session_id: str | None = None
    before: int = 0

    def concerns(self, user_id: int, session_id: str, issued_at: int) -> bool:
        """True if a token (or socket) of this user, session and issue time is revoked."""
        if user_id != self.user_id:
            return False
        if self.session_id is not None:
            return session_id == self.session_id
        return issued_at < self.before

    def encode(self) -> bytes:
        return json.dumps([self.user_id, self.session_id, self.before]).encode()

    @classmethod
    def decode(cls, payload: bytes) -> Revocation | None:
        try:
            user_id, session_id, before = json.loads(payload)
            return cls(int(user_id), None if session_id is None else str(session_id), int(before))
        except (ValueError, TypeError):
            logger.warning("unreadable revocation %r", payload[:100])
            return None


class Revocations:
    """This replica's view of the revocations, kept current from Redis."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        ttl_s: int,
        on_revoked: Callable[[Revocation], None] = lambda revocation: None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._bus = EventBus(redis, keys)
        self._ttl_s = ttl_s
        self._on_revoked = on_revoked
        self._sessions: dict[str, tuple[int, float]] = {}  # session -> (user, forget at)
        self._users: dict[int, tuple[int, float]] = {}  # user -> (before, forget at)
        self._listener = ChannelListener(
            self._bus, keys.revocations_channel(), self._on_payload
        )
        self._resyncer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe first, then load: a revocation between the two is not missed."""
        await self._listener.start()
        await self.resync()
        self._resyncer = asyncio.get_running_loop().create_task(self._resync_forever())

    async def close(self) -> None:
        if self._resyncer is not None:
            self._resyncer.cancel()
            await asyncio.gather(self._resyncer, return_exceptions=True)
        await self._listener.close()

    def is_revoked(self, claims: AccessClaims) -> bool:
        """True if the token's session, or every session of its user, was logged out."""
        now = time.monotonic()
        session = self._sessions.get(claims.session_id)
        if session is not None and session[0] == claims.user_id and session[1] > now:
            return True
        user = self._users.get(claims.user_id)
        return user is not None and user[1] > now and claims.issued_at < user[0]

    async def revoke(self, revocation: Revocation) -> None:
        """Record a logout for every replica (this one included) and announce it."""
        if revocation.session_id is not None:
            key = self._keys.revoked_session(revocation.session_id)
            value = str(revocation.user_id)
        else:
            key = self._keys.revoked_user(revocation.user_id)
            value = str(revocation.before)
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(key, value, ex=self._ttl_s)
        pipe.publish(self._keys.revocations_channel(), revocation.encode())
        await pipe.execute()
        self._apply(revocation, self._ttl_s)

    async def resync(self) -> None:
        """Re-read every revocation key (and its remaining TTL) from Redis."""
        prefix_s = self._keys.revoked_session("")
        prefix_u = self._keys.revoked_user(0)[:-1]
        keys = [
            raw.decode() if isinstance(raw, bytes) else str(raw)
            async for raw in self._redis.scan_iter(
                match=self._keys.revocations_pattern(), count=500
            )
        ]
        if not keys:
            return
        # One round trip for every key (this runs on every replica every RESYNC_S).
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
            pipe.ttl(key)
        replies = await pipe.execute()
        for key, value, ttl in zip(keys, replies[::2], replies[1::2], strict=True):
            if value is None or ttl is None or int(ttl) <= 0:
                continue
            text = value.decode() if isinstance(value, bytes) else str(value)
            if key.startswith(prefix_s):
                revocation = Revocation(int(text), session_id=key[len(prefix_s) :])
            elif key.startswith(prefix_u):
                revocation = Revocation(int(key[len(prefix_u) :]), before=int(text))
            else:
                continue
            self._apply(revocation, int(ttl))

    def _apply(self, revocation: Revocation, ttl_s: float) -> None:
        forget_at = time.monotonic() + ttl_s
        if revocation.session_id is not None:
            known = revocation.session_id in self._sessions
            self._sessions[revocation.session_id] = (revocation.user_id, forget_at)
        else:
            earlier = self._users.get(revocation.user_id)
            known = earlier is not None and earlier[0] >= revocation.before
            if not known:
                self._users[revocation.user_id] = (revocation.before, forget_at)
        self._forget_expired()
        if not known:  # our own publish comes back, and a resync re-reads what we have
            self._on_revoked(revocation)

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for sid in [s for s, (_, at) in self._sessions.items() if at <= now]:
            del self._sessions[sid]
        for uid in [u for u, (_, at) in self._users.items() if at <= now]:
            del self._users[uid]

    def _on_payload(self, payload: bytes) -> None:
        revocation = Revocation.decode(payload)
        if revocation is not None:
            self._apply(revocation, self._ttl_s)

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_S)
            try:
                await self.resync()
            except (RedisError, OSError):
                logger.warning("revocation resync failed", exc_info=True)
