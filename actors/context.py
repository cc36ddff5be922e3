"""What an entity may use: the host's stores, writer, caches and publisher."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from actors.publisher import Publisher
from storage.caches import CheckpointCache, PresenceCache
from storage.checkpoints import CheckpointStore
from storage.conversations import ConversationStore
from storage.db import Database
from storage.events import EventBus
from storage.keys import Keys
from storage.messages import MessageStore
from storage.users import UserStore
from storage.writer import GroupCommitWriter
from warbler.config import Settings


@dataclass
class EntityContext:
    """Services shared by every entity of one host (one writer, one Redis client per host)."""

    settings: Settings
    keys: Keys
    db: Database
    conversations: ConversationStore
    messages: MessageStore
    users: UserStore
    writer: GroupCommitWriter
    checkpoints: CheckpointStore
    checkpoint_cache: CheckpointCache
    presence: PresenceCache
    publisher: Publisher

    @classmethod
    def build(cls, settings: Settings, db: Database, redis: aioredis.Redis) -> EntityContext:
        """Wire the services over one database and one Redis client (the writer is not started)."""
        keys = Keys(settings.namespace)
        return cls(
            settings=settings,
            keys=keys,
            db=db,
            conversations=ConversationStore(db),
            messages=MessageStore(db),
            users=UserStore(db),
            writer=GroupCommitWriter(
                db,
                max_batch=settings.writer_max_batch,
                max_delay_ms=settings.writer_max_delay_ms,
            ),
            checkpoints=CheckpointStore(db),
            checkpoint_cache=CheckpointCache(redis, keys),
            presence=PresenceCache(redis, keys),
            publisher=Publisher(EventBus(redis, keys)),
        )

    async def start(self) -> None:
        """Start the group-commit writer."""
        await self.writer.start()

    async def stop(self) -> None:
        """Flush the writer and the publisher."""
        await self.writer.stop()
        await self.publisher.drain()
