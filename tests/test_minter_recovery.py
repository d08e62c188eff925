"""The minter survives what production throws at it: SIGKILL mid-way, and a reorg that drops a
mined mint. Either way every album is minted exactly once, with contiguous nonces."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import asyncpg

from chain.album import album_id_to_bytes32
from chain.rpc import RpcClient, to_int
from chain.signer import Signer
from discograph.localchain import Anvil
from discograph.processes import ChildProcess
from discograph.settings import Settings
from tests.conftest import REPO_ROOT
from tests.indexing import owners_on_chain
from tests.minting import (
    album_minted_logs,
    all_in,
    grant_minter_key,
    mine_until_final,
    mint_events,
    minter_env,
    minter_settings,
    queue_mints,
    running_minter,
    status_counts,
    wait_until,
)

SETTINGS_VARS = {name.upper() for name in Settings.__struct_fields__}
MINTS = 100
SENT = ("submitted", "mined", "confirmed", "finalized", "failed")


async def send_foreign(rpc: RpcClient, anvil: Anvil, key: Signer, nonce: int, to: str) -> str:
    """Another sender using the minter's key: a plain transfer with `nonce`; its hash."""
    tx = {
        "type": 2,
        "chainId": anvil.chain_id,
        "nonce": nonce,
        "gas": 21_000,
        "maxFeePerGas": 10 * 10**9,
        "maxPriorityFeePerGas": 10**9,
        "value": 1,
        "data": "0x",
        "to": to,
    }
    raw, tx_hash = key.sign_transaction(tx)
    await rpc.call("eth_sendRawTransaction", [raw])
    return tx_hash


def start_minter_process(env: dict[str, str], cwd: Path, run: int) -> ChildProcess:
    """`python -m minter.service` as an operator runs it (dies with us, by PDEATHSIG)."""
    return ChildProcess(
        f"minter-{run}",
        [sys.executable, "-m", "minter.service"],
        log_path=cwd / f"minter-{run}.log",
        env=env,
        cwd=cwd,
    )


async def sent_count(pool: asyncpg.Pool) -> int:
    counts = await status_counts(pool)
    return sum(counts.get(status, 0) for status in SENT)


async def assert_no_nonce_used_twice(pool: asyncpg.Pool, label: str) -> None:
    duplicates = await pool.fetchval(
        "SELECT count(*) FROM (SELECT nonce FROM mint_txs GROUP BY nonce HAVING count(*) > 1) d"
    )
    assert duplicates == 0, f"a nonce signed twice {label}"
    unrecorded = await pool.fetchval(
        "SELECT count(*) FROM mint_requests m WHERE status <> 'queued'"
        " AND NOT EXISTS (SELECT 1 FROM mint_txs t WHERE t.tx_hash = m.tx_hash)"
    )
    assert unrecorded == 0, f"a sent request without its recorded transaction {label}"


async def test_minter_sigkilled_mid_way_and_restarted_mints_every_album_exactly_once(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    album_contract: str,
    pool: asyncpg.Pool,
    database_url: str,
    tmp_path: Path,
) -> None:
    key_holder = await grant_minter_key(rpc, dev_signers[0], album_contract)
    start_nonce = to_int(await rpc.call("eth_getTransactionCount", [key_holder.address, "latest"]))
    queued = await queue_mints(pool, MINTS)
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARS}
    env.update(
        minter_env(anvil.rpc_url, album_contract, DATABASE_URL=database_url, LOG_LEVEL="INFO"),
        PYTHONPATH=str(REPO_ROOT),
    )
    at_kill = []
    processes = []
    try:
        # Killed as soon as it has sent something, then again further on: mid-batch, between
        # the commit of signed transactions and their broadcast, or while tracking.
        for run, threshold in enumerate((1, MINTS // 2)):
            process = start_minter_process(env, tmp_path, run)
            processes.append(process)
            deadline = time.monotonic() + 30
            while await sent_count(pool) < threshold:
                assert process.running(), process.log_tail()
                assert time.monotonic() < deadline, process.log_tail()
                await asyncio.sleep(0.005)
            process.popen.kill()  # SIGKILL: no finally, no rollback, no lock release
            process.popen.wait(10)
            at_kill.append(await sent_count(pool))
            await assert_no_nonce_used_twice(pool, f"after kill {run}")

        process = start_minter_process(env, tmp_path, 2)
        processes.append(process)

        async def everything(statuses: tuple[str, ...]) -> bool:
            assert process.running(), process.log_tail()
            return await all_in(pool, statuses, MINTS)()

        await wait_until(lambda: everything(("confirmed", "finalized")), "all mints confirmed")
        await mine_until_final(rpc)
        await wait_until(lambda: everything(("finalized",)), "all mints finalized")
        process.stop()  # SIGTERM: a clean stop
        assert process.popen.returncode == 0, process.log_tail()
    finally:
        for process in processes:
            process.stop()

    assert any(0 < count < MINTS for count in at_kill), at_kill
    for process in processes:
        assert "Traceback" not in process.log_path.read_text(), process.log_tail(50)
    nonces = [r["nonce"] for r in await pool.fetch("SELECT nonce FROM mint_txs ORDER BY nonce")]
    assert nonces == list(range(start_nonce, start_nonce + MINTS))
    logs = await album_minted_logs(rpc, album_contract)
    assert len(logs) == MINTS
    assert sorted(log["topics"][2] for log in logs) == sorted(
        "0x" + album_id_to_bytes32(q.album_id).hex() for q in queued
    )
    rows = await pool.fetch("SELECT token_id, to_address FROM mint_requests")
    owners = await owners_on_chain(rpc, album_contract, [int(r["token_id"]) for r in rows])
    assert all(owners[int(r["token_id"])] == "0x" + bytes(r["to_address"]).hex() for r in rows)
    pending = to_int(await rpc.call("eth_getTransactionCount", [key_holder.address, "pending"]))
    assert pending == start_nonce + MINTS
    print(f"\nsent requests at each SIGKILL: {at_kill}")


async def test_reorg_that_drops_a_mined_mint_sends_the_same_tx_again_and_it_finalizes_once(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    album_contract: str,
    pool: asyncpg.Pool,
    database_url: str,
) -> None:
    await grant_minter_key(rpc, dev_signers[0], album_contract)
    (queued,) = await queue_mints(pool, 1)
    settings = minter_settings(anvil.rpc_url, album_contract)

    async def mint() -> asyncpg.Record:
        row = await pool.fetchrow("SELECT * FROM mint_requests WHERE id = $1", queued.mint_id)
        assert row is not None
        return row

    async with running_minter(settings, database_url) as task:
        await wait_until(all_in(pool, ("confirmed",), 1), "the mint confirmed", task=task)
        before = await mint()
        head = to_int(await rpc.call("eth_blockNumber"))
        # Replace every block from the mint's on: the new branch does not have it.
        await rpc.call("anvil_reorg", [head - before["block_number"] + 1, []])
        assert await rpc.call("eth_getTransactionReceipt", ["0x" + before["tx_hash"].hex()]) is None

        async def mined_again() -> bool:
            row = await mint()
            return row["status"] == "confirmed" and row["block_hash"] != before["block_hash"]

        await wait_until(mined_again, "the mint mined again on the new branch", task=task)
        await mine_until_final(rpc)
        await wait_until(all_in(pool, ("finalized",), 1), "the mint finalized", task=task)

    after = await mint()
    assert after["tx_hash"] == before["tx_hash"]  # the same signed transaction, sent again
    assert after["attempts"] == 1
    assert await pool.fetchval("SELECT count(*) FROM mint_txs") == 1
    receipt = await rpc.call("eth_getTransactionReceipt", ["0x" + after["tx_hash"].hex()])
    assert "0x" + after["block_hash"].hex() == receipt["blockHash"]
    assert (await mint_events(pool))[str(queued.mint_id)] == [
        "submitted",
        "mined",
        "confirmed",
        "submitted",
        "mined",
        "confirmed",
        "finalized",
    ]
    logs = await album_minted_logs(rpc, album_contract)
    assert [log["topics"][2] for log in logs] == ["0x" + album_id_to_bytes32(queued.album_id).hex()]
    owners = await owners_on_chain(rpc, album_contract, [int(after["token_id"])])
    assert owners[int(after["token_id"])] == "0x" + queued.to.hex()
    assert await pool.fetchval("SELECT status FROM albums WHERE id = $1", queued.album_id) == (
        "minted"
    )


async def test_transactions_the_node_lost_are_sent_again_in_nonce_order(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    album_contract: str,
    pool: asyncpg.Pool,
    database_url: str,
) -> None:
    key_holder = await grant_minter_key(rpc, dev_signers[0], album_contract)
    start = to_int(await rpc.call("eth_getTransactionCount", [key_holder.address, "latest"]))
    await queue_mints(pool, 3)
    settings = minter_settings(anvil.rpc_url, album_contract, MINT_REPLACE_AFTER="600")
    await rpc.call("evm_setAutomine", [False])

    async def pooled(count: int) -> bool:
        answer = await rpc.call("eth_getTransactionCount", [key_holder.address, "pending"])
        return to_int(answer) == start + count

    async with running_minter(settings, database_url) as task:
        await wait_until(lambda: pooled(3), "3 transactions in the pool", task=task)
        await rpc.call("anvil_dropAllTransactions")  # a node restart, an evicted pool…
        assert await pooled(0)
        await wait_until(lambda: pooled(3), "the same 3 sent again", task=task)
        await rpc.call("evm_mine")
        await wait_until(all_in(pool, ("confirmed",), 3), "3 confirmed mints", task=task)

    rows = await pool.fetch("SELECT tx_hash, attempts FROM mint_requests ORDER BY nonce")
    assert [r["attempts"] for r in rows] == [1, 1, 1]
    assert await pool.fetchval("SELECT count(*) FROM mint_txs") == 3
    receipts = [
        await rpc.call("eth_getTransactionReceipt", ["0x" + r["tx_hash"].hex()]) for r in rows
    ]
    assert all(to_int(r["status"]) == 1 for r in receipts)
    assert len(await album_minted_logs(rpc, album_contract)) == 3


async def test_nonce_taken_by_another_sender_fails_the_mint_instead_of_sending_it_twice(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    album_contract: str,
    pool: asyncpg.Pool,
    database_url: str,
) -> None:
    key_holder = await grant_minter_key(rpc, dev_signers[0], album_contract)
    (queued,) = await queue_mints(pool, 1)
    settings = minter_settings(anvil.rpc_url, album_contract, MINT_REPLACE_AFTER="600")
    await rpc.call("evm_setAutomine", [False])
    async with running_minter(settings, database_url) as task:
        await wait_until(all_in(pool, ("submitted",), 1), "the mint sent", task=task)
    nonce = await pool.fetchval("SELECT nonce FROM mint_requests")

    # While the minter is down, its transaction leaves the pool and someone else uses the key
    # (same nonce), and that becomes final.
    await rpc.call("anvil_dropAllTransactions")
    await send_foreign(rpc, anvil, key_holder, nonce, dev_signers[2].address)
    await rpc.call("evm_mine")
    await mine_until_final(rpc)

    async with running_minter(settings, database_url) as task:
        await wait_until(all_in(pool, ("failed",), 1), "the mint failed", task=task)

    row = await pool.fetchrow("SELECT * FROM mint_requests WHERE id = $1", queued.mint_id)
    assert f"nonce {nonce} was used by another transaction" in row["error"]
    assert await pool.fetchval("SELECT count(*) FROM mint_txs") == 1
    assert await album_minted_logs(rpc, album_contract) == []
    assert await pool.fetchval("SELECT status FROM albums WHERE id = $1", queued.album_id) == (
        "failed"
    )


async def test_node_errors_while_estimating_are_retried_not_fatal(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    album_contract: str,
    pool: asyncpg.Pool,
    database_url: str,
) -> None:
    from tests.faults import FaultyRpcServer, rpc_error

    await grant_minter_key(rpc, dev_signers[0], album_contract)
    await queue_mints(pool, 5)
    async with FaultyRpcServer(upstream=anvil.rpc_url) as proxy:
        # Not a revert: the node failing to answer (e.g. "header not found" behind a balancer).
        proxy.inject_for("eth_estimateGas", *[rpc_error(-32000, "header not found")] * 3)
        settings = minter_settings(proxy.url, album_contract)
        async with running_minter(settings, database_url) as task:
            await wait_until(
                all_in(pool, ("mined", "confirmed", "finalized"), 5), "5 mined mints", task=task
            )
            assert not task.done()
    assert ("eth_estimateGas", "rpc_error_-32000") in proxy.applied
    assert (await status_counts(pool)).get("failed", 0) == 0


async def test_a_nonce_another_sender_left_empty_is_filled_so_later_mints_are_mined(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    album_contract: str,
    pool: asyncpg.Pool,
    database_url: str,
) -> None:
    """Someone else sends with the minter's key (a pending transaction, so the minter skips
    its nonce), then that transaction is dropped: without a filler the mints behind the hole
    would never be mined."""
    key_holder = await grant_minter_key(rpc, dev_signers[0], album_contract)
    await rpc.call("evm_setAutomine", [False])
    nonce = to_int(await rpc.call("eth_getTransactionCount", [key_holder.address, "pending"]))
    foreign_hash = await send_foreign(rpc, anvil, key_holder, nonce, dev_signers[2].address)
    await queue_mints(pool, 3)
    settings = minter_settings(anvil.rpc_url, album_contract, MINT_REPLACE_AFTER="600")
    async with running_minter(settings, database_url) as task:
        await wait_until(all_in(pool, ("submitted",), 3), "3 mints sent", task=task)
        nonces = sorted(r["nonce"] for r in await pool.fetch("SELECT nonce FROM mint_requests"))
        assert nonces == [nonce + 1, nonce + 2, nonce + 3]  # the foreign one was skipped
        await rpc.call("anvil_dropTransaction", [foreign_hash])
        await rpc.call("evm_setAutomine", [True])
        await rpc.call("evm_mine")

        async def mined() -> bool:
            await rpc.call("evm_mine")
            return await all_in(pool, ("mined", "confirmed", "finalized"), 3)()

        await wait_until(mined, "3 mints mined behind the filled nonce", task=task)
    assert len(await album_minted_logs(rpc, album_contract)) == 3
    latest = to_int(await rpc.call("eth_getTransactionCount", [key_holder.address, "latest"]))
    assert latest == nonce + 4  # the filler took the foreign nonce
