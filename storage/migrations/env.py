"""Alembic environment. ``Database.migrate()`` hands in a live connection; the ``alembic`` CLI
(``alembic -c storage/alembic.ini ...``) builds one from Settings instead."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection
from sqlmodel import SQLModel

import storage.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from storage.search import is_search_object

target_metadata = SQLModel.metadata


def _configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite alters tables by copying them; batch mode does that for future revisions.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # The search index is engine-specific DDL (0004), not in the models: autogenerate
        # must not offer to drop it.
        include_name=lambda name, type_, parents: not is_search_object(name, type_, parents),
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_from_settings() -> None:
    from storage.db import Database
    from warbler.config import Settings

    database = Database.from_settings(Settings())
    try:
        async with database.engine.connect() as conn:
            await conn.run_sync(_configure_and_run)
            await conn.commit()
    finally:
        await database.close()


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    asyncio.run(_run_from_settings())


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run()
