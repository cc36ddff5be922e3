"""Logged-out sessions, known to every gateway replica, so their access tokens die at once.

An access token is checked with no I/O (``serve.tokens``) and lives ``access_token_ttl_s``
(15 min). Logging out revokes the refresh token in SQL; without more, the access tokens of
that session kept working until they expired. Here a logout also:

- writes a Redis key per revoked session (and, for "all devices", the user's cut-off time),
  with a TTL of the access-token lifetime: after that no token it concerns is valid anyway;
- publishes it on ``Keys.revocations_channel``: every replica adds it to memory at once, and
  closes the sockets it concerns (close 4403, "session revoked");
- every replica re-reads the keys when it starts, every ``RESYNC_S`` and when the event bus
  comes back, which covers a message a replica missed (Redis pub/sub drops what a
  disconnected listener does not hear); a revocation it holds that Redis lost (restarted
  empty) it writes back, so replicas started later still know it.

So ``is_revoked`` is a dict lookup: authenticating a request or a hello stays free of I/O.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from serve.tokens import AccessClaims
from storage import Keys, Revocation, RevocationCache

__all__ = ["RESYNC_S", "Revocation", "Revocations"]

logger = logging.getLogger(__name__)

# How often a replica re-reads every revocation from Redis (a missed message's worst delay).
RESYNC_S = 10.0


class Revocations:
    """This replica's view of the revocations, kept current from Redis."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        ttl_s: int,
        on_revoked: Callable[[Revocation], None] = lambda revocation: None,
    ) -> None:
        self._cache = RevocationCache(redis, keys)
        self._ttl_s = ttl_s
        self._on_revoked = on_revoked
        self._sessions: dict[str, tuple[int, float]] = {}  # session -> (user, forget at)
        self._users: dict[int, tuple[int, float]] = {}  # user -> (before, forget at)
        self._listener = self._cache.listener(lambda revocation: self._apply(revocation, ttl_s))
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
        await self._cache.revoke(revocation, self._ttl_s)
        self._apply(revocation, self._ttl_s)

    async def resync(self) -> None:
        """Re-read every revocation (and its remaining TTL) from Redis, and write back the
        ones this replica holds that Redis lost: a Redis restarted empty would otherwise
        forget every logout for the replicas that start after it (their sessions' access
        tokens would work again until they expire)."""
        loaded = await self._cache.load_all()
        for revocation, ttl_s in loaded:
            self._apply(revocation, ttl_s)
        lost = self._missing_from(loaded)
        if lost:
            await self._cache.restore(lost)
            logger.warning("restored %d revocations that Redis had lost", len(lost))

    def _missing_from(self, loaded: list[tuple[Revocation, int]]) -> list[tuple[Revocation, int]]:
        sessions = {r.session_id for r, _ in loaded if r.session_id is not None}
        users = {r.user_id for r, _ in loaded if r.session_id is None}
        now = time.monotonic()
        lost: list[tuple[Revocation, int]] = []
        for sid, (user_id, forget_at) in self._sessions.items():
            # Under a second left: the key expired in Redis as it should, do not revive it.
            if sid not in sessions and (left := int(forget_at - now)) >= 1:
                lost.append((Revocation(user_id, session_id=sid), left))
        for user_id, (before, forget_at) in self._users.items():
            if user_id not in users and (left := int(forget_at - now)) >= 1:
                lost.append((Revocation(user_id, before=before), left))
        return lost

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

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_S)
            try:
                await self.resync()
            except (RedisError, OSError):
                logger.warning("revocation resync failed", exc_info=True)
