"""Schema: migrations equal the SQLAlchemy metadata, go up/down/up, and work from the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from db.engine import downgrade, migrate, sqlalchemy_url
from db.tables import metadata
from tests.conftest import REPO_ROOT

EXPECTED_TABLES = {
    "token_events",
    "artists",
    "albums",
    "tracks",
    "contracts",
    "blocks",
    "checkpoints",
    "transfers",
    "nfts",
    "mint_requests",
    "outbox",
    "mint_txs",
    "signers",
    "idempotency_keys",
    "audit_runs",
}


async def _schema(dsn: str) -> dict[str, list[str]]:
    """Tables → sorted index definitions (what a reader of the schema would compare)."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'alembic_version'"
        )
        result = {}
        for row in tables:
            indexes = await conn.fetch(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = $1",
                row["tablename"],
            )
            result[row["tablename"]] = sorted(r["indexdef"] for r in indexes)
        return result
    finally:
        await conn.close()


async def test_upgrade_creates_every_table_of_the_design(empty_database_url: str) -> None:
    await migrate(empty_database_url)
    assert set(await _schema(empty_database_url)) == EXPECTED_TABLES


async def test_migrations_go_up_down_and_up_again(empty_database_url: str) -> None:
    await migrate(empty_database_url)
    first = await _schema(empty_database_url)
    await downgrade(empty_database_url, "base")
    assert await _schema(empty_database_url) == {}
    await migrate(empty_database_url)
    assert await _schema(empty_database_url) == first


async def test_metadata_and_migrations_agree(empty_database_url: str) -> None:
    """SQLAlchemy metadata is the source of truth: autogenerate must find nothing to add."""
    await migrate(empty_database_url)
    engine = create_async_engine(sqlalchemy_url(empty_database_url))
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), metadata
                )
            )
    finally:
        await engine.dispose()
    assert diff == []


async def test_alembic_cli_and_discograph_migrate_build_the_same_schema(
    empty_database_url: str, database_url: str
) -> None:
    env = {**os.environ, "DATABASE_URL": empty_database_url}
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # `database_url` was migrated through db.engine.migrate (the template).
    assert await _schema(empty_database_url) == await _schema(database_url)


async def test_token_ids_hold_the_largest_uint256(pool: asyncpg.Pool) -> None:
    largest = 2**256 - 1
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO transfers (chain_id, contract, block_number, block_hash, log_index,"
            " tx_hash, from_address, to_address, token_id)"
            " VALUES (1, $1, 1, $2, 0, $2, $1, $1, $3)",
            bytes(20),
            bytes(32),
            largest,
        )
        assert await conn.fetchval("SELECT token_id FROM transfers") == largest


async def test_0007_adds_mint_chain_ids_to_existing_rows_and_goes_back_down_with_data(
    empty_database_url: str,
) -> None:
    """0006 → 0007 → 0006 → 0007 on a database holding mint requests."""
    await migrate(empty_database_url, "0006")
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(
            "INSERT INTO artists (id, name) VALUES ('00000000-0000-0000-0000-00000000000a', 'A');"
            " INSERT INTO albums (id, artist_id, title)"
            " SELECT ('00000000-0000-0000-0000-0000000000' || lpad(n::text, 2, '0'))::uuid,"
            " '00000000-0000-0000-0000-00000000000a', 'album ' || n"
            " FROM generate_series(1, 3) AS n;"
            " INSERT INTO mint_requests (id, album_id, requester, to_address, token_uri,"
            "   status, signer, nonce)"
            " SELECT gen_random_uuid(), id, 'a', decode(repeat('11', 20), 'hex'), 'ipfs://x',"
            "   'submitted', decode(repeat('22', 20), 'hex'), row_number() OVER (ORDER BY id)"
            " FROM albums;"
            " INSERT INTO checkpoints (chain_id, block_number, block_hash)"
            " VALUES (31337, 5, decode(repeat('33', 32), 'hex'))"
        )
        await migrate(empty_database_url, "0007")
        chains = await conn.fetch("SELECT chain_id, nonce FROM mint_requests ORDER BY nonce")
        assert [(r["chain_id"], r["nonce"]) for r in chains] == [(31337, 1), (31337, 2), (31337, 3)]
        plan = await conn.fetchval(
            "EXPLAIN (FORMAT TEXT) SELECT * FROM mint_requests WHERE signer = $1 AND nonce >= 2",
            bytes.fromhex("22" * 20),
        )
        assert plan is not None
        indexes = await conn.fetch(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'mint_requests'"
        )
        assert "ix_mint_requests_signer_nonce" in {r["indexname"] for r in indexes}

        await downgrade(empty_database_url, "0006")
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'mint_requests'"
        )
        assert "chain_id" not in {r["column_name"] for r in columns}
        assert await conn.fetchval("SELECT count(*) FROM mint_requests") == 3

        await migrate(empty_database_url, "0007")
        assert await conn.fetchval("SELECT count(*) FROM mint_requests WHERE chain_id = 31337") == 3
    finally:
        await conn.close()


async def test_0008_makes_failed_and_finalized_mints_final_and_goes_back_down_with_data(
    empty_database_url: str,
) -> None:
    """0007 → 0008 → 0007 → 0008 on a database holding mint requests of every kind: existing
    `failed` and `finalized` rows are final, the others not; a failure that is not final holds
    its album; the old index comes back on the way down."""
    await migrate(empty_database_url, "0007")
    conn = await asyncpg.connect(empty_database_url)
    statuses = ["queued", "submitted", "confirmed", "finalized", "failed", "failed"]
    try:
        await conn.execute(
            "INSERT INTO artists (id, name) VALUES ('00000000-0000-0000-0000-00000000000a', 'A');"
            " INSERT INTO albums (id, artist_id, title)"
            " SELECT ('00000000-0000-0000-0000-0000000000' || lpad(n::text, 2, '0'))::uuid,"
            " '00000000-0000-0000-0000-00000000000a', 'album ' || n"
            " FROM generate_series(1, 6) AS n"
        )
        await conn.execute(
            "INSERT INTO mint_requests (id, album_id, requester, to_address, token_uri, status,"
            "   updated_at)"
            " SELECT gen_random_uuid(), a.id, 'a', decode(repeat('11', 20), 'hex'), 'ipfs://x',"
            "   s.status, timestamptz '2026-12-01 00:00:00+00'"
            " FROM unnest($1::text[]) WITH ORDINALITY AS s(status, n)"
            " JOIN albums a ON a.title = 'album ' || s.n",
            statuses,
        )
        # The last album's failed mint was retried: allowed by 0007's index, kept by 0008.
        await conn.execute(
            "INSERT INTO mint_requests (id, album_id, requester, to_address, token_uri)"
            " SELECT gen_random_uuid(), id, 'a', decode(repeat('11', 20), 'hex'), 'ipfs://y'"
            " FROM albums WHERE title = 'album 6'"
        )
        await migrate(empty_database_url, "0008")
        rows = await conn.fetch("SELECT status, final_at FROM mint_requests")
        final = {(r["status"], r["final_at"] is not None) for r in rows}
        assert final == {
            ("queued", False),
            ("submitted", False),
            ("confirmed", False),
            ("finalized", True),
            ("failed", True),
        }
        assert await conn.fetchval(
            "SELECT bool_and(final_at = timestamptz '2026-12-01 00:00:00+00')"
            " FROM mint_requests WHERE final_at IS NOT NULL"
        )
        index = await conn.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE indexname = $1",
            "ux_mint_requests_one_live_per_album",
        )
        assert "final_at IS NULL" in index
        # A failure not final yet (a revert whose block may still be dropped) holds its album.
        await conn.execute(
            "UPDATE mint_requests SET final_at = NULL WHERE status = 'failed'"
            " AND album_id = (SELECT id FROM albums WHERE title = 'album 5')"
        )
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO mint_requests (id, album_id, requester, to_address, token_uri)"
                " SELECT gen_random_uuid(), id, 'a', decode(repeat('11', 20), 'hex'), 'ipfs://z'"
                " FROM albums WHERE title = 'album 5'"
            )

        await downgrade(empty_database_url, "0007")
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'mint_requests'"
        )
        assert "final_at" not in {r["column_name"] for r in columns}
        assert await conn.fetchval("SELECT count(*) FROM mint_requests") == 7
        index = await conn.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE indexname = $1",
            "ux_mint_requests_one_live_per_album",
        )
        assert "final_at" not in index
        assert "'failed'" in index

        await migrate(empty_database_url, "0008")
        assert await conn.fetchval("SELECT count(*) FROM mint_requests WHERE final_at IS NULL") == 4
    finally:
        await conn.close()


async def test_0009_adds_audit_runs_and_goes_back_down(empty_database_url: str) -> None:
    """0008 → 0009 → 0008 → 0009: the table comes and goes, its newest-run index with it."""
    await migrate(empty_database_url, "0008")
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrate(empty_database_url, "0009")
        await conn.execute(
            "INSERT INTO audit_runs (chain_id, at, finalized_block, block_hash, tokens,"
            " differences, kinds, seconds)"
            " VALUES (31337, now(), 10, $1, 5, 1, '{\"owner\": 1}', 0.5)",
            bytes(32),
        )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO audit_runs (chain_id, at, finalized_block, block_hash, tokens,"
                " differences, seconds) VALUES (1, now(), 1, $1, -1, 0, 0)",
                bytes(32),
            )
        indexes = await conn.fetch(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'audit_runs'"
        )
        assert "ix_audit_runs_chain_id_at" in {r["indexname"] for r in indexes}

        await downgrade(empty_database_url, "0008")
        assert await conn.fetchval("SELECT to_regclass('audit_runs')") is None

        await migrate(empty_database_url, "0009")
        assert await conn.fetchval("SELECT count(*) FROM audit_runs") == 0
    finally:
        await conn.close()
