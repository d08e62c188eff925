"""The `contracts` table: which contracts the indexer follows on which chain."""

from __future__ import annotations

import asyncpg


async def record_contract(
    conn: asyncpg.Connection, chain_id: int, address: bytes, kind: str, start_block: int
) -> None:
    """Insert or update a followed contract (a redeploy at the same address keeps one row)."""
    await conn.execute(
        """
        INSERT INTO contracts (chain_id, address, kind, start_block) VALUES ($1, $2, $3, $4)
        ON CONFLICT (chain_id, address)
        DO UPDATE SET kind = EXCLUDED.kind, start_block = EXCLUDED.start_block
        """,
        chain_id,
        address,
        kind,
        start_block,
    )


async def album_contracts(conn: asyncpg.Connection, chain_id: int) -> list[tuple[bytes, int]]:
    """(address, start_block) of the chain's album contracts, newest first."""
    rows = await conn.fetch(
        "SELECT address, start_block FROM contracts WHERE chain_id = $1 AND kind = 'album' "
        "ORDER BY created_at DESC",
        chain_id,
    )
    return [(bytes(row["address"]), int(row["start_block"])) for row in rows]
