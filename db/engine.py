"""Connections: asyncpg pools for the hot paths, URLs for SQLAlchemy/Alembic, migrations."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from discograph.errors import DiscographError

# Every way a database round trip can fail: loops that log and retry use this. It includes
# asyncpg's InternalClientError, raised by a connection that got Postgres's shutdown notice
# while in use ("cannot switch to state …"), which is not a PostgresError.
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
# The database is away, restarting or out of resources: worth waiting for, never our bug.
DB_UNAVAILABLE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.OperatorInterventionError,  # 57xxx: shutting down, starting up, statement timeout
    asyncpg.InsufficientResourcesError,  # 53xxx: too many connections, disk full
)


class DatabaseError(DiscographError):
    """The database is unreachable or not in the state we need."""


def sqlalchemy_url(dsn: str) -> str:
    """`postgresql://…` → `postgresql+asyncpg://…` for SQLAlchemy's async engine."""
    scheme, sep, rest = dsn.partition("://")
    if not sep or scheme not in ("postgres", "postgresql"):
        raise DatabaseError("DATABASE_URL must be a postgresql:// URL")
    return f"postgresql+asyncpg://{rest}"


def with_database(dsn: str, database: str) -> str:
    """The same server DSN pointing at another database name."""
    head, _, tail = dsn.partition("://")
    location, _, query = tail.partition("?")
    server = location.split("/", 1)[0]
    return f"{head}://{server}/{database}" + (f"?{query}" if query else "")


def database_name(dsn: str) -> str:
    location = dsn.partition("://")[2].partition("?")[0]
    name = location.split("/", 1)[1] if "/" in location else ""
    return name or "postgres"


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """No reset query on release (asyncpg still rolls back an open transaction itself)."""


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, session_state: bool = True
) -> asyncpg.Pool:
    """An asyncpg pool; create it inside the event loop that will use it.

    `session_state=False` is for users that never leave session state behind (no LISTEN,
    SET, session advisory lock or cursor): a released connection then skips asyncpg's reset
    query (`RESET ALL; UNLISTEN *; ...`), a round trip per request saved on the API's reads.
    """
    reset = None if session_state else _keep_session
    try:
        pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, reset=reset)
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseError(f"cannot connect to Postgres: {exc}") from exc
    assert pool is not None
    return pool


async def _connect_admin(dsn: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(with_database(dsn, "postgres"))
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseError(f"cannot connect to Postgres: {exc}") from exc


async def ensure_database(dsn: str) -> bool:
    """Create the database `dsn` names if it does not exist; True when it was created."""
    name = database_name(dsn)
    admin = await _connect_admin(dsn)
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        await admin.execute(f'CREATE DATABASE "{_quote(name)}"')
        return True
    finally:
        await admin.close()


async def drop_database(dsn: str) -> None:
    name = database_name(dsn)
    admin = await _connect_admin(dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{_quote(name)}" WITH (FORCE)')
    finally:
        await admin.close()


def _quote(identifier: str) -> str:
    if not identifier.replace("_", "").replace("-", "").isalnum():
        raise DatabaseError(f"unsupported database name {identifier!r}")
    return identifier


def alembic_config(dsn: str) -> Any:
    """An Alembic `Config` for our migrations (packaged, so it works when installed)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "db:migrations")
    config.set_main_option("sqlalchemy.url", dsn)
    config.set_main_option("path_separator", "os")
    return config


def _run_alembic(action: str, dsn: str, revision: str) -> None:
    from alembic import command

    config = alembic_config(dsn)
    if action == "upgrade":
        command.upgrade(config, revision)
    else:
        command.downgrade(config, revision)


async def migrate(dsn: str, revision: str = "head") -> None:
    """`alembic upgrade <revision>`; runs in a thread because Alembic's env owns an event loop."""
    await asyncio.to_thread(_run_alembic, "upgrade", dsn, revision)


async def downgrade(dsn: str, revision: str) -> None:
    await asyncio.to_thread(_run_alembic, "downgrade", dsn, revision)
