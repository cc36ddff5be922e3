"""Logged-out sessions in Redis: a key per revoked session (or per user logged out
everywhere) with a TTL of the access-token lifetime, and a channel announcing each one.

After the TTL no token a revocation concerns is valid anyway, so the keys clean themselves up.
Gateways hold the revocations in memory (``serve.revocations``); this module is how they are
written, announced and re-read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from storage.events import ChannelListener, EventBus
from storage.keys import Keys

logger = logging.getLogger(__name__)


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


class RevocationCache:
    """Writes, announces and re-reads the revocations of one namespace."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    def listener(self, on_revocation: Callable[[Revocation], None]) -> ChannelListener:
        """A listener (not started) that hands every announced revocation to the callback."""

        def on_payload(payload: bytes) -> None:
            revocation = Revocation.decode(payload)
            if revocation is not None:
                on_revocation(revocation)

        return ChannelListener(
            EventBus(self._redis, self._keys), self._keys.revocations_channel(), on_payload
        )

    def _key_value(self, revocation: Revocation) -> tuple[str, str]:
        # A session's key holds its user; a user's key the cut-off time.
        if revocation.session_id is not None:
            return self._keys.revoked_session(revocation.session_id), str(revocation.user_id)
        return self._keys.revoked_user(revocation.user_id), str(revocation.before)

    async def revoke(self, revocation: Revocation, ttl_s: int) -> None:
        """Store the revocation for ``ttl_s`` and announce it, in one round trip."""
        key, value = self._key_value(revocation)
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(key, value, ex=ttl_s)
        pipe.publish(self._keys.revocations_channel(), revocation.encode())
        await pipe.execute()

    async def restore(self, items: list[tuple[Revocation, int]]) -> None:
        """Write back revocations Redis lost (a restart without persistence), each with its
        remaining TTL; one round trip, nothing announced (every live replica has them), never
        overwriting a key that is there."""
        if not items:
            return
        pipe = self._redis.pipeline(transaction=False)
        for revocation, ttl_s in items:
            key, value = self._key_value(revocation)
            pipe.set(key, value, ex=ttl_s, nx=True)
        await pipe.execute()

    async def load_all(self) -> list[tuple[Revocation, int]]:
        """Every live revocation with its remaining TTL in seconds."""
        prefix_s = self._keys.revoked_session("")
        prefix_u = self._keys.revoked_user(0)[:-1]
        keys = [
            raw.decode() if isinstance(raw, bytes) else str(raw)
            async for raw in self._redis.scan_iter(
                match=self._keys.revocations_pattern(), count=500
            )
        ]
        if not keys:
            return []
        # One round trip for every key (each replica runs this at start and every resync).
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
            pipe.ttl(key)
        replies = await pipe.execute()
        found: list[tuple[Revocation, int]] = []
        for key, value, ttl in zip(keys, replies[::2], replies[1::2], strict=True):
            if value is None or ttl is None or int(ttl) <= 0:
                continue
            text = value.decode() if isinstance(value, bytes) else str(value)
            if key.startswith(prefix_s):
                found.append((Revocation(int(text), session_id=key[len(prefix_s) :]), int(ttl)))
            elif key.startswith(prefix_u):
                found.append((Revocation(int(key[len(prefix_u) :]), before=int(text)), int(ttl)))
        return found
