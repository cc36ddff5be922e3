"""Durable entity checkpoints in SQL (the hot copies live in Redis, ``CheckpointCache``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, case
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from storage.db import Database
from storage.models import ENTITY_KEY_MAX, Checkpoint
from storage.types import utcnow
from warbler.errors import ErrorCode, WarblerError

_checkpoints: Table = Checkpoint.__table__  # type: ignore[attr-defined]


class CheckpointStore:
    """One row per entity; a write with a version not newer than the stored one is ignored."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, key: str) -> Checkpoint | None:
        """The stored checkpoint of ``key``, or None."""
        async with self._db.session() as session:
            return await session.get(Checkpoint, key)

    async def put(self, key: str, version: int, state: bytes) -> None:
        """Upsert ``key``'s checkpoint in one statement, keeping whichever version is newer."""
        if not key or len(key) > ENTITY_KEY_MAX:
            raise WarblerError(
                ErrorCode.VALIDATION, f"entity key must be 1-{ENTITY_KEY_MAX} characters"
            )
        values = {"entity_key": key, "version": version, "state": state, "updated_at": utcnow()}
        stmt: Any
        if self._db.dialect == "mysql":
            ins = mysql_insert(_checkpoints).values(**values)
            newer = ins.inserted.version > _checkpoints.c.version
            # MySQL applies the assignments left to right, each seeing the ones before it:
            # version must be assigned last, or the others would compare against the new value.
            stmt = ins.on_duplicate_key_update(
                [
                    ("state", case((newer, ins.inserted.state), else_=_checkpoints.c.state)),
                    (
                        "updated_at",
                        case((newer, ins.inserted.updated_at), else_=_checkpoints.c.updated_at),
                    ),
                    ("version", case((newer, ins.inserted.version), else_=_checkpoints.c.version)),
                ]
            )
        else:
            ins_any: Any = (
                pg_insert(_checkpoints)
                if self._db.dialect == "postgresql"
                else sqlite_insert(_checkpoints)
            )
            ins_any = ins_any.values(**values)
            stmt = ins_any.on_conflict_do_update(
                index_elements=[_checkpoints.c.entity_key],
                set_={
                    "version": ins_any.excluded.version,
                    "state": ins_any.excluded.state,
                    "updated_at": ins_any.excluded.updated_at,
                },
                where=ins_any.excluded.version > _checkpoints.c.version,
            )
        async with self._db.engine.begin() as conn:
            await conn.execute(stmt)
