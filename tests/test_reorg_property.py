"""Reorg property test: random forks of depth 1 to REORG_WINDOW while the indexer follows the
chain live, with mints, transfers and metadata changes (`setTokenURI`) on both branches.

After every round the projection must equal a fresh index of the canonical chain, and the
outbox must hold a `removed` message for every orphaned event. `DISCOGRAPH_REORG_ROUNDS`
sets the number of rounds (default 50 in `make test`; the issue's full run is 1,000),
`DISCOGRAPH_REORG_SEED` picks another seed and `DISCOGRAPH_REORG_WINDOW` the window (default
16: a fork as deep as the window still shares a stored hash with the node).
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from chain.rpc import RpcClient
from chain.signer import Signer
from discograph.localchain import Anvil, start_anvil
from tests.indexing import (
    ChainDriver,
    index_to_head,
    indexer_settings,
    live_indexer,
    projection,
    projection_differences,
    wait_synced,
)

ROUNDS = int(os.environ.get("DISCOGRAPH_REORG_ROUNDS", "50"))
SEED = int(os.environ.get("DISCOGRAPH_REORG_SEED", "20261126"))
WINDOW = int(os.environ.get("DISCOGRAPH_REORG_WINDOW", "16"))
METADATA_SHARE = 0.2  # of the transactions on each branch: setTokenURI
CHAIN_TABLES = "transfers, token_events, nfts, blocks, checkpoints, outbox"


async def _announced_above(database_url: str, block: int) -> set[tuple[str, int, str]]:
    """(block hash, log index, type) of every live event above `block`."""
    conn = await asyncpg.connect(database_url)
    try:
        transfers = await conn.fetch(
            "SELECT block_hash, log_index FROM transfers WHERE block_number > $1", block
        )
        events = await conn.fetch(
            "SELECT DISTINCT block_hash, log_index, kind FROM token_events WHERE block_number > $1",
            block,
        )
    finally:
        await conn.close()
    found = {("0x" + bytes(r["block_hash"]).hex(), r["log_index"], "transfer") for r in transfers}
    found |= {
        (
            "0x" + bytes(r["block_hash"]).hex(),
            r["log_index"],
            "mint" if r["kind"] == "album_minted" else "metadata",
        )
        for r in events
    }
    return found


async def _removed_messages(database_url: str) -> set[tuple[str, int, str]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT payload FROM outbox WHERE kind = 'removed'")
    finally:
        await conn.close()
    import json

    payloads = [json.loads(r["payload"]) for r in rows]
    return {(p["block_hash"], p["log_index"], p["removed_type"]) for p in payloads}


async def _fresh_index(database_url: str, settings: object) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"TRUNCATE {CHAIN_TABLES}")
    finally:
        await conn.close()
    await index_to_head(database_url, settings)  # type: ignore[arg-type]


@pytest.fixture
def anvil(tmp_path: Path) -> Iterator[Anvil]:
    """anvil keeping the state of every block: the fresh index reads `tokenURI` as of each
    metadata update's block, and by default anvil keeps 500 states in memory and 3,600 on disk
    (the full 1,000 rounds make about 20,000). Without them the fresh index stores no URI for
    old updates (a node limit, not the indexer's: see docs/operations.md, archive state)."""
    chain = start_anvil(tmp_path, extra_args=("--max-persisted-states", "1000000"))
    try:
        yield chain
    finally:
        chain.stop()


@pytest.mark.timeout(max(300, ROUNDS * 10))  # the full 1,000 rounds take about an hour
async def test_random_reorgs_leave_the_projection_equal_to_a_fresh_index(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    database_url: str,
    second_database_url: str,
) -> None:
    rng = random.Random(SEED)
    driver = ChainDriver(rpc, dev_signers, rng)
    (album,) = await driver.deploy(1)
    await driver.random_activity(8)
    settings = indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album, REORG_WINDOW=str(WINDOW))
    depths = []
    orphaned_total: set[tuple[str, int, str]] = set()
    started = time.monotonic()
    async with live_indexer(database_url, settings) as task:
        await wait_synced(database_url, rpc, task=task)
        for round_ in range(ROUNDS):
            fork_block = int(await rpc.call("eth_blockNumber"), 16)
            snapshot = await rpc.call("evm_snapshot")
            saved = driver.snapshot()
            depth = rng.randint(1, WINDOW)
            depths.append(depth)
            await driver.random_activity(depth, metadata=METADATA_SHARE)  # a block per tx
            await wait_synced(database_url, rpc, task=task)
            orphaned = await _announced_above(database_url, fork_block)

            assert await rpc.call("evm_revert", [snapshot]) is True
            driver.restore(saved)
            await driver.random_activity(depth, metadata=METADATA_SHARE)
            await rpc.call("anvil_mine", ["0x1"])  # the new branch is one block longer
            await wait_synced(database_url, rpc, task=task)

            removed = await _removed_messages(database_url)
            assert orphaned <= removed, f"round {round_}: orphaned events not announced removed"
            orphaned_total |= orphaned
            await _fresh_index(second_database_url, settings)
            live, fresh = await projection(database_url), await projection(second_database_url)
            assert live == fresh, (
                f"round {round_} (depth {depth}, fork above block {fork_block}) diverges from"
                f" a fresh index: {projection_differences(live, fresh)}"
            )
            if (round_ + 1) % 100 == 0:
                print(
                    f"reorg property: {round_ + 1}/{ROUNDS} rounds,"
                    f" {time.monotonic() - started:.0f} s"
                )
    conn = await asyncpg.connect(database_url)
    try:
        reorgs = await conn.fetchval("SELECT last_reorg_depth FROM checkpoints")
    finally:
        await conn.close()
    assert reorgs is not None
    assert len(depths) == ROUNDS
    histogram = Counter(depths)
    print(
        f"reorg property: {ROUNDS} reorgs (seed {SEED}, depth 1..{WINDOW}:"
        f" {dict(sorted(histogram.items()))}) in {time.monotonic() - started:.0f} s,"
        f" {len(driver.owners)} tokens, {len(orphaned_total)} orphaned events all announced"
    )
