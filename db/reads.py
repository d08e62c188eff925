"""Read queries for the API (asyncpg, `$n` parameters, keyset pagination, index scans)."""

from __future__ import annotations

import asyncpg


async def chain_view(conn: asyncpg.Connection | asyncpg.Pool) -> asyncpg.Record | None:
    """The indexer's checkpoint and view of the chain (the single indexed chain)."""
    return await conn.fetchrow(
        "SELECT chain_id, block_number, block_hash, head_block, safe_block, finalized_block,"
        " block_timestamp, last_reorg_depth, last_reorg_block, last_reorg_at, rollbacks,"
        " updated_at"
        " FROM checkpoints ORDER BY chain_id LIMIT 1"
    )


async def followed_contracts(conn: asyncpg.Connection | asyncpg.Pool) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT chain_id, address, kind, start_block FROM contracts ORDER BY chain_id, address"
        )
    )
