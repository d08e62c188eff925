"""One active indexer per chain: a second one waits as hot standby and takes over on a crash.

The lease is a Postgres advisory lock on a dedicated connection; every write transaction checks
that the lock is still held, so an indexer that lost it can never commit again.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from chain.rpc import RpcClient
from chain.signer import Signer
from db.engine import create_pool
from discograph.localchain import ANVIL_CHAIN_ID, Anvil
from indexer.decode import Transfer
from indexer.errors import LeaseLost
from indexer.lease import Lease, lock_key
from indexer.progress import Progress
from indexer.projection import Batch
from indexer.service import run_indexer
from indexer.source import Header
from indexer.store import Store
from tests.indexing import (
    ChainDriver,
    index_to_head,
    indexer_settings,
    projection,
    wait_synced,
)
from tests.stack import CliProcess, cli_env

SEED = 20261128
STANDBY = "hot standby"
TOOK_OVER = "took over as the active indexer"


async def _checkpoint(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        value = await conn.fetchval("SELECT block_number FROM checkpoints")
    finally:
        await conn.close()
    return -1 if value is None else int(value)


async def _until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll `predicate` (plain or async) until it holds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _head(rpc: RpcClient) -> int:
    return int(await rpc.call("eth_blockNumber"), 16)


async def test_a_standby_indexer_waits_then_takes_over_when_the_active_one_is_killed(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    database_url: str,
    second_database_url: str,
    tmp_path: Path,
) -> None:
    driver = ChainDriver(rpc, dev_signers, random.Random(SEED))
    (album,) = await driver.deploy(1)
    await driver.random_activity(15)
    await rpc.call("anvil_mine", ["0x50"])
    await driver.random_activity(5)
    env = cli_env(
        DATABASE_URL=database_url,
        RPC_URL=anvil.rpc_url,
        ALBUM_CONTRACT=album,
        CONFIRMATIONS="0",
        POLL_INTERVAL="0.05",
        LOG_LEVEL="INFO",  # the standby announces itself at INFO
    )
    indexers = [CliProcess(name, "index", env, tmp_path) for name in ("first", "second")]
    try:
        await _until(
            lambda: any(STANDBY in i.output() for i in indexers), 20, "one indexer in standby"
        )
        head = await _head(rpc)
        await _until(
            lambda: _reached(database_url, head),
            20,
            "the active indexer to reach the head",
        )
        (standby,) = [i for i in indexers if STANDBY in i.output()]
        (active,) = [i for i in indexers if i is not standby]
        # The lock is held by the active one's connection only, and only it writes.
        holders = await _lock_holders(database_url)
        assert len(holders) == 1
        assert "batch committed" in active.output()
        assert "batch committed" not in standby.output()
        assert standby.popen.poll() is None  # waiting, not dead

        active.kill()
        await driver.random_activity(6)  # the chain goes on while nobody indexes
        await _until(lambda: TOOK_OVER in standby.output(), 20, "the standby to take over")
        head = await _head(rpc)
        await _until(lambda: _reached(database_url, head), 20, "the new active one to catch up")
        assert "batch committed" in standby.output()
        assert "Traceback" not in standby.output()
    finally:
        for indexer in indexers:
            indexer.kill()
    await index_to_head(second_database_url, indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album))
    assert await projection(database_url) == await projection(second_database_url)


async def _reached(database_url: str, block: int) -> bool:
    return await _checkpoint(database_url) >= block


async def _lock_holders(database_url: str) -> list[int]:
    """Backends that hold the indexer's advisory lock for anvil's chain."""
    unsigned = lock_key(ANVIL_CHAIN_ID) & 0xFFFFFFFFFFFFFFFF
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            """
            SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
              AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1
            """,
            unsigned >> 32,
            unsigned & 0xFFFFFFFF,
        )
    finally:
        await conn.close()
    return [int(r["pid"]) for r in rows]


def _batch(number: int, token_id: int) -> Batch:
    header = Header(
        number=number,
        hash=number.to_bytes(32, "big"),
        parent_hash=(number - 1).to_bytes(32, "big"),
        timestamp=1_700_000_000 + number,
        logs_bloom="",
    )
    contract = bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3")
    transfer = Transfer(
        ANVIL_CHAIN_ID,
        contract,
        number,
        header.hash,
        0,
        bytes([number]) * 32,
        bytes(20),
        bytes.fromhex("70997970c51812dc3a010c7d01b50e0d17dc79c8"),
        token_id,
    )
    return Batch(
        chain_id=ANVIL_CHAIN_ID,
        first=number,
        last=header,
        transfers=[transfer],
        token_events=[],
        window=[header],
    )


async def test_a_lease_whose_lock_connection_was_terminated_can_never_commit(
    database_url: str,
) -> None:
    lease = Lease(database_url, ANVIL_CHAIN_ID)
    await lease.acquire()
    pool = await create_pool(database_url, min_size=1, max_size=2)
    successor = Lease(database_url, ANVIL_CHAIN_ID, retry_every=0.05)
    try:
        store = Store(pool, ANVIL_CHAIN_ID, lease, reorg_window=128)
        await store.commit(_batch(1, token_id=1))
        async with pool.acquire() as conn, conn.transaction():
            await lease.assert_held(conn)  # held: no error

        (holder,) = await _lock_holders(database_url)
        assert await pool.fetchval("SELECT pg_terminate_backend($1)", holder) is True
        await _until(
            lambda: _no_holder(database_url), 10, "the terminated backend to release the lock"
        )

        async with pool.acquire() as conn, conn.transaction():
            with pytest.raises(LeaseLost):
                await lease.assert_held(conn)
        with pytest.raises(LeaseLost):
            await store.commit(_batch(2, token_id=2))
        # Nothing of the refused batch is there: the checkpoint and rows are block 1's.
        assert await pool.fetchval("SELECT block_number FROM checkpoints") == 1
        assert await pool.fetchval("SELECT count(*) FROM transfers") == 1
        assert await pool.fetchval("SELECT count(*) FROM nfts") == 1

        # Another indexer may take over at once, and a late commit still fails.
        await asyncio.wait_for(successor.acquire(), 5)
        with pytest.raises(LeaseLost):
            await store.commit(_batch(2, token_id=2))
        assert await pool.fetchval("SELECT block_number FROM checkpoints") == 1
    finally:
        await lease.release()
        await successor.release()
        await pool.close()


async def test_releasing_a_lease_whose_lock_connection_was_terminated_does_not_raise(
    database_url: str,
) -> None:
    lease = Lease(database_url, ANVIL_CHAIN_ID)
    await lease.acquire()
    (holder,) = await _lock_holders(database_url)
    admin = await asyncpg.connect(database_url)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", holder) is True
    finally:
        await admin.close()
    await _until(lambda: _no_holder(database_url), 10, "the lock to be released")
    await asyncio.sleep(0.1)  # let the client notice its connection is gone
    await lease.release()


async def test_an_indexer_that_lost_its_lock_connection_waits_as_standby_and_commits_nothing(
    anvil: Anvil, rpc: RpcClient, dev_signers: list[Signer], database_url: str
) -> None:
    """A Postgres restart or a proxy closing the lock connection: the batch in flight is
    refused, the indexer goes back to standby (it does not exit) while another connection holds
    the lock, and takes the lease again once it is free."""
    driver = ChainDriver(rpc, dev_signers, random.Random(SEED + 1))
    (album,) = await driver.deploy(1)
    await driver.random_activity(3)
    settings = indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album)
    task = asyncio.create_task(
        run_indexer(settings, database_url, progress=Progress(io.StringIO()))
    )
    thief = await asyncpg.connect(database_url)
    try:
        await wait_synced(database_url, rpc, task=task)
        (holder,) = await _lock_holders(database_url)
        assert await thief.fetchval("SELECT pg_terminate_backend($1)", holder) is True
        await _until(lambda: _no_holder(database_url), 10, "the lock to be released")
        # Someone else takes the lock before the indexer notices (a standby would).
        assert await thief.fetchval("SELECT pg_try_advisory_lock($1)", lock_key(ANVIL_CHAIN_ID))
        before = await _checkpoint(database_url)
        await driver.random_activity(2)  # the next commit must be refused
        await asyncio.sleep(1.5)
        assert not task.done(), "the indexer exited instead of waiting as a standby"
        assert await _checkpoint(database_url) == before
        await thief.execute("SELECT pg_advisory_unlock_all()")
        await wait_synced(database_url, rpc, task=task)
        assert await _checkpoint(database_url) > before
    finally:
        await thief.close()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def _no_holder(database_url: str) -> bool:
    return not await _lock_holders(database_url)
