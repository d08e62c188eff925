"""`discograph status`: where the indexer stands against the chain."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from chain.errors import ChainError
from chain.rpc import RpcClient
from discograph.encoding import checksum_address
from discograph.settings import Settings


async def print_status(settings: Settings, dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT * FROM checkpoints ORDER BY chain_id")
        contracts = await conn.fetch(
            "SELECT chain_id, address, kind, start_block FROM contracts ORDER BY chain_id, kind"
        )
    finally:
        await conn.close()
    head: int | None = None
    if settings.rpc_url:
        try:
            async with RpcClient(settings.rpc_url[0], timeout=5) as rpc:
                head = int(await rpc.call("eth_blockNumber"), 16)
        except ChainError as exc:
            print(f"node: unreachable ({type(exc).__name__})")
    if not rows:
        print("nothing indexed yet")
    for row in rows:
        chain_head = head if head is not None else row["head_block"]
        lag = chain_head - row["block_number"] if chain_head is not None else None
        age = ""
        if row["block_timestamp"] is not None:
            seconds = (datetime.now(UTC) - row["block_timestamp"]).total_seconds()
            age = f" ({max(seconds, 0):,.0f}s behind wall clock)"
        print(f"chain {row['chain_id']}")
        print(f"  head         {chain_head if chain_head is not None else 'unknown'}")
        print(f"  indexed      {row['block_number']} 0x{bytes(row['block_hash']).hex()}")
        print(f"  lag          {lag if lag is not None else 'unknown'} blocks{age}")
        print(f"  safe         {row['safe_block']}")
        print(f"  finalized    {row['finalized_block']}")
        if row["last_reorg_at"] is not None:
            print(
                f"  last reorg   depth {row['last_reorg_depth']} back to block "
                f"{row['last_reorg_block']} at {row['last_reorg_at']:%Y-%m-%d %H:%M:%S %Z}"
            )
        else:
            print("  last reorg   none seen")
    for c in contracts:
        print(
            f"  contract     {c['kind']:<6} {checksum_address(bytes(c['address']))} "
            f"(chain {c['chain_id']}, from block {c['start_block']})"
        )
