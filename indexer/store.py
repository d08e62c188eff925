"""The indexer's Postgres side: checkpoint, block window, and fenced batch commits."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass

import asyncpg

from indexer.lease import Lease
from indexer.projection import Batch, Rollback, rollback_to, write_history, write_state
from indexer.source import Header


@dataclass(frozen=True)
class Checkpoint:
    block_number: int
    block_hash: bytes


class Store:
    def __init__(self, pool: asyncpg.Pool, chain_id: int, lease: Lease, reorg_window: int) -> None:
        self.pool = pool
        self.chain_id = chain_id
        self.lease = lease
        self.reorg_window = reorg_window

    async def checkpoint(self) -> Checkpoint | None:
        row = await self.pool.fetchrow(
            "SELECT block_number, block_hash FROM checkpoints WHERE chain_id = $1", self.chain_id
        )
        if row is None:
            return None
        return Checkpoint(int(row["block_number"]), bytes(row["block_hash"]))

    async def analyze(self) -> None:
        """Refresh planner statistics after a large backfill: until autovacuum does, fresh
        tables are planned as if empty (an NFT lookup scanned 70,000 rows instead of one)."""
        async with self.pool.acquire() as conn:
            await conn.execute("ANALYZE transfers, nfts, token_events")

    async def feed_started(self) -> bool:
        """Whether anything was announced on the feed for this chain yet."""
        return bool(
            await self.pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE chain_id = $1)", self.chain_id
            )
        )

    async def window(self) -> dict[int, bytes]:
        """Stored block hashes by number (the recent, unfinalized window)."""
        rows = await self.pool.fetch(
            "SELECT number, hash FROM blocks WHERE chain_id = $1", self.chain_id
        )
        return {int(r["number"]): bytes(r["hash"]) for r in rows}

    async def commit(self, batch: Batch, after: Awaitable[object] | None = None) -> int:
        """Rows, window, checkpoint and outbox of one batch in one fenced transaction.

        With `after` (the commit of the batch before), the events are copied at once and the
        ordered part waits for it: two batches write in parallel, and still commit in order.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            await self.lease.assert_held(conn)
            await write_history(conn, batch)
            if after is not None:
                await after
            return await write_state(conn, batch, self.prune_below(batch))

    def prune_below(self, batch: Batch) -> int:
        """Window blocks below this number are dropped: older than REORG_WINDOW, or below
        the finalized block (which no reorg can undo)."""
        return max(batch.last.number - self.reorg_window, batch.finalized or 0)

    async def rollback(self, ancestor: Header, depth: int | None) -> Rollback:
        async with self.pool.acquire() as conn, conn.transaction():
            await self.lease.assert_held(conn)
            return await rollback_to(conn, self.chain_id, ancestor, depth)

    async def reset(self) -> Rollback:
        """Forget everything indexed for the chain (a reindex from its first block)."""
        nothing = Header(number=-1, hash=b"", parent_hash=b"", timestamp=0, logs_bloom="")
        async with self.pool.acquire() as conn, conn.transaction():
            await self.lease.assert_held(conn)
            result = await rollback_to(conn, self.chain_id, nothing, None)
            await conn.execute("DELETE FROM checkpoints WHERE chain_id = $1", self.chain_id)
            return result

    async def record_chain_view(self, head: int, safe: int | None, finalized: int | None) -> None:
        """Refresh head/safe/finalized between batches (drives finality labels and lag)."""
        await self.pool.execute(
            "UPDATE checkpoints SET head_block = $2, safe_block = $3, finalized_block = $4,"
            " updated_at = now() WHERE chain_id = $1",
            self.chain_id,
            head,
            safe,
            finalized,
        )
