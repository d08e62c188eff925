"""Wire an indexer from settings: contracts, fail-over RPC, pool, lease, then run it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import asyncpg

from chain.failover import FailoverRpc
from db.contracts import record_contract
from db.engine import DB_ERRORS, create_pool
from db.outbox import prune_outbox
from discograph.errors import ConfigError
from discograph.settings import Settings
from indexer.context import Context, IndexerConfig
from indexer.errors import LeaseLost
from indexer.heads import watch_new_heads
from indexer.lease import Lease
from indexer.progress import Progress
from indexer.source import ChainSource
from indexer.store import Store
from indexer.sync import Indexer

log = logging.getLogger("discograph.indexer")


@dataclass(frozen=True)
class Followed:
    album: tuple[bytes, ...]
    erc721: tuple[bytes, ...]
    start_block: int


async def followed_contracts(pool: asyncpg.Pool, settings: Settings, chain_id: int) -> Followed:
    """The contracts to index: those in settings (recorded in `contracts`) plus those recorded
    before (by `discograph deploy`)."""
    async with pool.acquire() as conn:
        if settings.album_contract:
            await _record_if_new(conn, chain_id, settings.album_contract, "album", settings)
        for address in settings.extra_contracts:
            await _record_if_new(conn, chain_id, address, "erc721", settings)
        rows = await conn.fetch(
            "SELECT address, kind, start_block FROM contracts WHERE chain_id = $1", chain_id
        )
    if not rows:
        raise ConfigError(
            "no contract to index: set ALBUM_CONTRACT / EXTRA_CONTRACTS or run `discograph deploy`"
        )
    return Followed(
        album=tuple(bytes(r["address"]) for r in rows if r["kind"] == "album"),
        erc721=tuple(bytes(r["address"]) for r in rows if r["kind"] == "erc721"),
        start_block=min(int(r["start_block"]) for r in rows),
    )


async def _record_if_new(
    conn: asyncpg.Connection, chain_id: int, address: str, kind: str, settings: Settings
) -> None:
    raw = bytes.fromhex(address[2:])
    exists = await conn.fetchval(
        "SELECT 1 FROM contracts WHERE chain_id = $1 AND address = $2", chain_id, raw
    )
    if not exists:
        await record_contract(conn, chain_id, raw, kind, settings.start_block)


async def chain_id_of(rpc: FailoverRpc, settings: Settings) -> int:
    chain_id = int(await rpc.call("eth_chainId"), 16)
    if settings.chain_id is not None and settings.chain_id != chain_id:
        raise ConfigError(f"CHAIN_ID is {settings.chain_id} but the node is on chain {chain_id}")
    return chain_id


async def rewind(ctx: Context, from_block: int, start_block: int) -> None:
    """`discograph reindex --from BLOCK`: drop everything indexed at or above BLOCK."""
    if from_block <= start_block:
        result = await ctx.store.reset()
    else:
        (ancestor,) = await ctx.source.headers([from_block - 1])
        if ancestor is None:
            raise ConfigError(f"the node has no block {from_block - 1}: cannot reindex from there")
        result = await ctx.store.rollback(ancestor, None)
    log.warning(
        "rewound for reindex",
        extra={
            "from_block": from_block,
            "removed_transfers": result.removed_transfers,
            "tokens_recomputed": result.tokens_recomputed,
        },
    )


async def run_indexer(
    settings: Settings,
    database_url: str,
    *,
    until: int | None = None,
    reindex_from: int | None = None,
    progress: Progress | None = None,
    started: asyncio.Future[Indexer] | None = None,
) -> int:
    """Run the indexer until `until` (None: forever); returns the last indexed block."""
    if not settings.rpc_url:
        raise ConfigError("RPC_URL is not set")
    async with FailoverRpc(settings.rpc_url, timeout=settings.rpc_timeout) as rpc:
        chain_id = await chain_id_of(rpc, settings)
        pool = await create_pool(database_url, min_size=1, max_size=4)
        lease = Lease(database_url, chain_id)
        try:
            followed = await followed_contracts(pool, settings, chain_id)
            config = IndexerConfig(
                chain_id=chain_id,
                album_contracts=frozenset(followed.album),
                contracts=followed.album + followed.erc721,
                start_block=followed.start_block,
                confirmations=settings.confirmations,
                reorg_window=settings.reorg_window,
                poll_interval=settings.poll_interval,
            )
            reindexed = reindex_from is None
            progress = progress or Progress()
            while True:
                await lease.acquire()
                ctx = Context(
                    config=config,
                    source=ChainSource(rpc, config.contracts),
                    store=Store(pool, chain_id, lease, settings.reorg_window),
                    progress=progress,
                )
                try:
                    if not reindexed:
                        await rewind(ctx, reindex_from or 0, followed.start_block)
                        reindexed = True
                    indexer = Indexer(ctx)
                    if started is not None and not started.done():
                        started.set_result(indexer)
                    return await _run_leased(settings, pool, indexer, until)
                except LeaseLost:
                    # The lock connection died (a Postgres restart, pg_terminate_backend, a
                    # proxy): the batch in flight was refused and rolled back. Nobody may hold
                    # the lease now, or a standby took it: wait for it again, as a standby does.
                    log.warning(
                        "the indexer's advisory lock is no longer held: back to standby",
                        extra={"chain_id": chain_id},
                    )
                    await lease.release()
        finally:
            await lease.release()
            await pool.close()


async def _run_leased(
    settings: Settings, pool: asyncpg.Pool, indexer: Indexer, until: int | None
) -> int:
    """The active indexer's work while it holds the lease: indexing, outbox pruning and the
    new-heads subscription."""
    async with contextlib.AsyncExitStack() as stack:
        retention = settings.outbox_retention_seconds()
        pruning = asyncio.create_task(prune_outbox_forever(pool, retention))
        stack.push_async_callback(_cancel, pruning)
        if settings.rpc_ws_url:
            heads = asyncio.create_task(watch_new_heads(settings.rpc_ws_url, indexer.wake))
            stack.push_async_callback(_cancel, heads)
        return await indexer.run(until)


async def prune_outbox_forever(
    pool: asyncpg.Pool, retention: float, *, every: float = 60.0, batch: int = 5000
) -> None:
    """Drop outbox rows older than OUTBOX_RETENTION, a batch per short transaction (no outbox
    lock is taken, so writers never wait); the active indexer does it once a minute."""
    while True:
        try:
            total = 0
            while True:
                deleted = await prune_outbox(pool, retention, batch)
                total += deleted
                if deleted < batch:
                    break
                await asyncio.sleep(0.05)
            if total:
                log.info("outbox pruned", extra={"rows": total, "retention_s": retention})
        except DB_ERRORS as exc:
            log.warning("outbox pruning failed, retrying later", extra={"error": repr(exc)})
        await asyncio.sleep(every)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
