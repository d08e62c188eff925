"""Alembic environment: runs migrations over asyncpg, target metadata from `db.tables`."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from db.engine import sqlalchemy_url
from db.tables import metadata
from discograph.errors import ConfigError
from discograph.settings import load_settings

config = context.config


def _database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    settings = load_settings()
    if not settings.database_url:
        raise ConfigError(
            "DATABASE_URL is not set: set it (environment or .env), "
            "or run `discograph migrate`, which also knows the embedded dev database"
        )
    return settings.database_url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_async_engine(sqlalchemy_url(_database_url()))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=sqlalchemy_url(_database_url()), target_metadata=metadata, literal_binds=True
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
