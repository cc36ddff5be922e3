"""SQLModel tables: the durable state of Warbler. The migrations in ``storage/migrations`` create
exactly these (a test compares them), plus the full-text search index of migration 0004, which
is engine-specific DDL (storage/search.py) and not declared here."""

# No ``from __future__ import annotations``: SQLModel reads the annotations at class creation.

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

from storage.types import BigIntPK, StateBlob, UTCDateTime, utcnow

# Every table: InnoDB, utf8mb4 and a binary collation on MySQL, so that uniqueness and prefix
# search compare strings exactly as PostgreSQL and SQLite do.
_MYSQL: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}

USERNAME_MAX = 64
DISPLAY_NAME_MAX = 128
TITLE_MAX = 200
CLIENT_MSG_ID_MAX = 64
# "<creator id>:<op id>": 20 digits, a colon, an op id of at most CLIENT_MSG_ID_MAX.
CREATION_KEY_MAX = 100
KIND_MAX = 16
ENTITY_KEY_MAX = 191  # 191 * 4 bytes (utf8mb4) fits MySQL's 767-byte index prefix limit

CONVERSATION_KINDS = ("direct", "group")
ROLES = ("owner", "admin", "member")


def _id_column() -> Any:
    return Column(BigIntPK, primary_key=True, autoincrement=True)


def _ts_column(*, nullable: bool = False) -> Any:
    return Column(UTCDateTime(), nullable=nullable)


def _user_fk(*, nullable: bool = False, index: bool = False) -> Any:
    return Column(
        BigInteger, ForeignKey("users.id", ondelete="CASCADE"), nullable=nullable, index=index
    )


class User(SQLModel, table=True):
    """An account. ``password_hash`` is an argon2 hash computed by the gateway."""

    __tablename__: ClassVar[str] = "users"
    __table_args__ = (UniqueConstraint("username", name="uq_users_username"), _MYSQL)

    id: int = Field(default=None, sa_column=_id_column())
    username: str = Field(sa_column=Column(String(USERNAME_MAX), nullable=False))
    password_hash: str = Field(sa_column=Column(String(255), nullable=False))
    display_name: str = Field(sa_column=Column(String(DISPLAY_NAME_MAX), nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts_column())
    # "user" or "bot" (migration 0003): bots are members like anyone, but never log in.
    kind: str = Field(
        default="user",
        sa_column=Column(String(KIND_MAX), nullable=False, server_default="user"),
    )


class RefreshToken(SQLModel, table=True):
    """A long-lived token that buys new access tokens until it expires or is revoked."""

    __tablename__: ClassVar[str] = "refresh_tokens"
    __table_args__ = (_MYSQL,)

    id: str = Field(sa_column=Column(String(64), primary_key=True))
    user_id: int = Field(sa_column=_user_fk(index=True))
    expires_at: datetime = Field(sa_column=_ts_column())
    revoked_at: datetime | None = Field(default=None, sa_column=_ts_column(nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts_column())


class Conversation(SQLModel, table=True):
    """A direct (two users) or group conversation.

    ``direct_key`` is ``"<min user id>:<max user id>"`` for a direct conversation and NULL for a
    group; its unique constraint makes creating a direct pair race-free. ``creation_key`` is
    ``"<creator id>:<op id>"`` for a group and NULL for a direct conversation: a retried
    creation command finds the group it inserted (migration 0002).
    """

    __tablename__: ClassVar[str] = "conversations"
    __table_args__ = (
        UniqueConstraint("direct_key", name="uq_conversations_direct_key"),
        Index("uq_conversations_creation_key", "creation_key", unique=True),
        _MYSQL,
    )

    id: int = Field(default=None, sa_column=_id_column())
    kind: str = Field(sa_column=Column(String(KIND_MAX), nullable=False))
    title: str = Field(default="", sa_column=Column(String(TITLE_MAX), nullable=False))
    created_by: int | None = Field(
        default=None,
        sa_column=Column(BigInteger, ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
    )
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts_column())
    direct_key: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    creation_key: str | None = Field(
        default=None, sa_column=Column(String(CREATION_KEY_MAX), nullable=True)
    )


class Membership(SQLModel, table=True):
    """A user's place in a conversation, with the highest seq they have read."""

    __tablename__: ClassVar[str] = "memberships"
    __table_args__ = (Index("ix_memberships_user_id", "user_id"), _MYSQL)

    conversation_id: int = Field(
        sa_column=Column(
            BigInteger,
            ForeignKey("conversations.id", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        )
    )
    user_id: int = Field(
        sa_column=Column(
            BigInteger,
            ForeignKey("users.id", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        )
    )
    role: str = Field(default="member", sa_column=Column(String(KIND_MAX), nullable=False))
    joined_at: datetime = Field(default_factory=utcnow, sa_column=_ts_column())
    read_seq: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))


class Message(SQLModel, table=True):
    """One entry of a conversation's log. ``seq`` is gapless per conversation."""

    __tablename__: ClassVar[str] = "messages"
    __table_args__ = (
        UniqueConstraint("conversation_id", "seq", name="uq_messages_conversation_seq"),
        UniqueConstraint("sender_id", "client_msg_id", name="uq_messages_sender_client_msg"),
        _MYSQL,
    )

    id: int = Field(default=None, sa_column=_id_column())
    conversation_id: int = Field(
        sa_column=Column(
            BigInteger, ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False
        )
    )
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    sender_id: int = Field(sa_column=_user_fk())
    client_msg_id: str = Field(sa_column=Column(String(CLIENT_MSG_ID_MAX), nullable=False))
    kind: str = Field(sa_column=Column(String(KIND_MAX), nullable=False))
    body: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts_column())


class Checkpoint(SQLModel, table=True):
    """The durable snapshot of one entity's state; ``version`` only ever grows."""

    __tablename__: ClassVar[str] = "checkpoints"
    __table_args__ = (_MYSQL,)

    entity_key: str = Field(sa_column=Column(String(ENTITY_KEY_MAX), primary_key=True))
    version: int = Field(sa_column=Column(BigInteger, nullable=False))
    state: bytes = Field(sa_column=Column(StateBlob, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts_column())


# --- ChatAI (migration 0003): bots and their knowledge bases ---------------------------------

BOT_PROMPT_MAX = 8000
AVATAR_MAX = 16
DOC_NAME_MAX = 200


class Bot(SQLModel, table=True):
    """A bot: its user row (``users.kind = "bot"``), owner, prompt, provider and budget.

    ``provider`` is ``{"kind": "extractive"}`` or ``{"kind": "openai", "url", "model",
    "api_key"}``; ``kb_version`` grows with every knowledge upload, so answering entities know
    when to reload the vectors; ``tokens_used`` is charged after each answer.
    """

    __tablename__: ClassVar[str] = "bots"
    __table_args__ = (UniqueConstraint("user_id", name="uq_bots_user_id"), _MYSQL)

    id: int = Field(default=None, sa_column=_id_column())
    user_id: int = Field(sa_column=_user_fk())
    owner_id: int = Field(sa_column=_user_fk(index=True))
    avatar: str = Field(default="", sa_column=Column(String(AVATAR_MAX), nullable=False))
    system_prompt: str = Field(default="", sa_column=Column(Text, nullable=False))
    provider: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    support_group_id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger, ForeignKey("conversations.id", ondelete="SET NULL"), nullable=True
        ),
    )
    answer_all: bool = Field(default=False, sa_column=Column(Boolean, nullable=False))
    min_confidence: float = Field(default=0.3, sa_column=Column(Float, nullable=False))
    token_budget: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    tokens_used: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    kb_version: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts_column())


class KnowledgeDoc(SQLModel, table=True):
    """One uploaded document of a bot's knowledge base; re-uploading a name replaces it."""

    __tablename__: ClassVar[str] = "knowledge_docs"
    __table_args__ = (UniqueConstraint("bot_id", "name", name="uq_knowledge_docs_bot_name"), _MYSQL)

    id: int = Field(default=None, sa_column=_id_column())
    bot_id: int = Field(
        sa_column=Column(BigInteger, ForeignKey("bots.id", ondelete="CASCADE"), nullable=False)
    )
    name: str = Field(sa_column=Column(String(DOC_NAME_MAX), nullable=False))
    content_type: str = Field(sa_column=Column(String(64), nullable=False))
    chunks: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    chars: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts_column())


class KnowledgeChunk(SQLModel, table=True):
    """A passage of a document and its embedding (float32 bytes, unit length)."""

    __tablename__: ClassVar[str] = "knowledge_chunks"
    __table_args__ = (Index("ix_knowledge_chunks_bot_id", "bot_id"), _MYSQL)

    id: int = Field(default=None, sa_column=_id_column())
    doc_id: int = Field(
        sa_column=Column(
            BigInteger, ForeignKey("knowledge_docs.id", ondelete="CASCADE"), nullable=False
        )
    )
    bot_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    ordinal: int = Field(sa_column=Column(Integer, nullable=False))
    heading: str = Field(default="", sa_column=Column(String(DOC_NAME_MAX), nullable=False))
    text: str = Field(sa_column=Column(Text, nullable=False))
    vector: bytes = Field(sa_column=Column(StateBlob, nullable=False))
