"""Each test gets its own database: rows written by one test are never seen by another."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from db.catalog import insert_artist
from tests.conftest import head_revision


@pytest.mark.parametrize("round_", [1, 2])
async def test_every_test_starts_with_empty_tables(pool: asyncpg.Pool, round_: int) -> None:
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM artists") == 0
        await insert_artist(conn, f"artist {round_}", None, uuid.uuid4())
        assert await conn.fetchval("SELECT count(*) FROM artists") == 1
        # The schema is there too (cloned from the migrated template).
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == head_revision()
