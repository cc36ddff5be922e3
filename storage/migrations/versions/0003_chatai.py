"""ChatAI: users get a kind ("user" | "bot"); bots, knowledge documents and their chunks.

Vectors are float32 bytes in a blob column (LONGBLOB on MySQL), which every engine stores the
same way; the cosine search runs in the answering process (docs/chatai.md).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_BLOB = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
_MYSQL: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def upgrade() -> None:
    op.add_column("users", sa.Column("kind", sa.String(16), nullable=False, server_default="user"))
    op.create_table(
        "bots",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column(
            "user_id",
            sa.BigInteger(),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "owner_id",
            sa.BigInteger(),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("avatar", sa.String(16), nullable=False),
        sa.Column("system_prompt", sa.Text(), nullable=False),
        sa.Column("provider", sa.JSON(), nullable=False),
        sa.Column(
            "support_group_id",
            sa.BigInteger(),
            sa.ForeignKey("conversations.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("answer_all", sa.Boolean(), nullable=False),
        sa.Column("min_confidence", sa.Float(), nullable=False),
        sa.Column("token_budget", sa.BigInteger(), nullable=False),
        sa.Column("tokens_used", sa.BigInteger(), nullable=False),
        sa.Column("kb_version", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.UniqueConstraint("user_id", name="uq_bots_user_id"),
        **_MYSQL,
    )
    op.create_table(
        "knowledge_docs",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column(
            "bot_id", sa.BigInteger(), sa.ForeignKey("bots.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("content_type", sa.String(64), nullable=False),
        sa.Column("chunks", sa.Integer(), nullable=False),
        sa.Column("chars", sa.Integer(), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.UniqueConstraint("bot_id", "name", name="uq_knowledge_docs_bot_name"),
        **_MYSQL,
    )
    op.create_table(
        "knowledge_chunks",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column(
            "doc_id",
            sa.BigInteger(),
            sa.ForeignKey("knowledge_docs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("bot_id", sa.BigInteger(), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("heading", sa.String(200), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("vector", _BLOB, nullable=False),
        **_MYSQL,
    )
    op.create_index("ix_knowledge_chunks_bot_id", "knowledge_chunks", ["bot_id"])


def downgrade() -> None:
    op.drop_index("ix_knowledge_chunks_bot_id", table_name="knowledge_chunks")
    op.drop_table("knowledge_chunks")
    op.drop_table("knowledge_docs")
    op.drop_table("bots")
    op.drop_column("users", "kind")
