"""Warbler's data layer: SQL (SQLModel on SQLite, PostgreSQL, MySQL/MariaDB) and Redis."""

from storage.appends import MessageDraft, SeqCounter, StoredMessage
from storage.caches import CheckpointCache, IdempotencyCache, PresenceCache, RateLimiter
from storage.checkpoints import CheckpointStore
from storage.conversations import ConversationStore, ConversationSummary, direct_key
from storage.db import Database
from storage.events import ChannelListener, EventBus, Subscriber
from storage.keys import Keys
from storage.messages import MessageStore
from storage.models import Checkpoint, Conversation, Membership, Message, RefreshToken, User
from storage.redis import EmbeddedRedis, connect_redis, resolve_redis_url
from storage.revocations import Revocation, RevocationCache
from storage.shard_maps import ShardMapStore
from storage.throttle import ThrottleCache
from storage.users import UserStore
from storage.writer import GroupCommitWriter

__all__ = [
    "Checkpoint",
    "CheckpointCache",
    "CheckpointStore",
    "Conversation",
    "ConversationStore",
    "ConversationSummary",
    "Database",
    "EmbeddedRedis",
    "EventBus",
    "GroupCommitWriter",
    "IdempotencyCache",
    "Keys",
    "Membership",
    "Message",
    "MessageDraft",
    "MessageStore",
    "PresenceCache",
    "RateLimiter",
    "RefreshToken",
    "Revocation",
    "RevocationCache",
    "SeqCounter",
    "ShardMapStore",
    "ThrottleCache",
    "StoredMessage",
    "Subscriber",
    "ChannelListener",
    "User",
    "UserStore",
    "connect_redis",
    "direct_key",
    "resolve_redis_url",
]
