"""Groups remember the command that created them, so a retried creation finds its group.

``conversations.creation_key`` is ``"<creator id>:<op id>"`` for a group (NULL for a direct
conversation, whose ``direct_key`` already makes creation idempotent). Without it, a crash
between inserting a group and logging its creation left a group that a retry of the same
command would not find, and the retry inserted a second one.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("conversations", sa.Column("creation_key", sa.String(100), nullable=True))
    # A unique index rather than a constraint: SQLite cannot ALTER TABLE ADD CONSTRAINT, and
    # every engine here lets a unique index hold many NULLs.
    op.create_index("uq_conversations_creation_key", "conversations", ["creation_key"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_conversations_creation_key", table_name="conversations")
    op.drop_column("conversations", "creation_key")
