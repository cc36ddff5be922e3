"""Every Redis key and pub/sub channel name, built in one place.

All names start with ``"<namespace>:"`` (``settings.namespace``), so two clusters or test sessions
can share one Redis server.
"""

from __future__ import annotations


class Keys:
    """Builds the Redis key and channel names of one namespace."""

    def __init__(self, namespace: str) -> None:
        if not namespace or ":" in namespace:
            raise ValueError(f"bad Redis namespace {namespace!r}: non-empty, without ':'")
        self.namespace = namespace
        self._p = f"{namespace}:"

    # Entities and placement.
    def ckpt(self, entity_key: str) -> str:
        """Hash with the hot checkpoint of an entity (fields ``v`` version, ``s`` state)."""
        return f"{self._p}ckpt:{entity_key}"

    def shard_map(self) -> str:
        """The versioned shard -> host directory."""
        return f"{self._p}shardmap"

    def hosts(self) -> str:
        """The registry of live actor hosts."""
        return f"{self._p}hosts"

    def lock(self, name: str) -> str:
        """A named cluster-wide lock."""
        return f"{self._p}lock:{name}"

    # Users, devices and gateways.
    def presence(self, user_id: int) -> str:
        """Hash of a user's online devices: device id -> ``"<expiry ms>:<replica id>"``."""
        return f"{self._p}presence:{user_id}"

    def replica(self, replica_id: str) -> str:
        """Liveness/heartbeat key of one gateway replica."""
        return f"{self._p}replica:{replica_id}"

    def ratelimit(self, name: str) -> str:
        """Token bucket of one limited thing (e.g. ``f"send:{user_id}"``)."""
        return f"{self._p}rl:{name}"

    def idem(self, scope: str, key: str) -> str:
        """An idempotency record, e.g. scope ``"send"`` and key ``f"{sender}:{client_msg_id}"``."""
        return f"{self._p}idem:{scope}:{key}"

    def recent(self, conversation_id: int) -> str:
        """Cache of a conversation's most recent messages."""
        return f"{self._p}recent:{conversation_id}"

    # Pub/sub channels.
    def conv_channel(self, conversation_id: int) -> str:
        """Events of one conversation (new messages, receipts, membership changes)."""
        return f"{self._p}ch:conv:{conversation_id}"

    def user_channel(self, user_id: int) -> str:
        """Events for one user (joined/left conversations, other devices' actions)."""
        return f"{self._p}ch:user:{user_id}"

    def replica_channel(self, replica_id: str) -> str:
        """Direct messages to one gateway replica."""
        return f"{self._p}ch:replica:{replica_id}"

    def gateways_channel(self) -> str:
        """Changes of the gateway replica set (a replica ready, a replica draining): every
        replica of every gateway app in the namespace listens (one haproxy serves them all)."""
        return f"{self._p}ch:gateways"

    def revoked_session(self, session_id: str) -> str:
        """A logged-out login session (its access tokens die now, not at expiry)."""
        return f"{self._p}revoked:s:{session_id}"

    def revoked_user(self, user_id: int) -> str:
        """A user logged out everywhere: access tokens issued before the stored time die."""
        return f"{self._p}revoked:u:{user_id}"

    def revocations_pattern(self) -> str:
        """SCAN pattern of both revocation keys (a replica loads them when it starts)."""
        return f"{self._p}revoked:*"

    def revocations_channel(self) -> str:
        """Revocations as they happen: every gateway replica listens."""
        return f"{self._p}ch:revoked"

    # ChatAI.
    def bot_pending(self) -> str:
        """Sorted set of bot turns handed over and not yet finished (score: when last sent);
        a host sweeps it to resend turns a dead host was carrying."""
        return f"{self._p}bot:pending"
