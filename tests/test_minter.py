"""The minter against a real anvil and Postgres: throughput, reverts, fee-bumped replacements."""

from __future__ import annotations

import asyncio
import itertools

import asyncpg
from prometheus_client import REGISTRY

from chain.abi import encode_call, load_artifact
from chain.album import MINTER_ROLE, album_id_to_bytes32
from chain.rpc import RpcClient, to_int
from chain.signer import Signer
from chain.transact import build_transaction, send_transaction
from discograph.encoding import parse_address
from discograph.localchain import ANVIL_CHAIN_ID, Anvil
from minter.service import lock_key, run_minter
from tests.indexing import owners_on_chain
from tests.minting import (
    album_minted_logs,
    all_in,
    grant_minter_key,
    mine_until_final,
    mined_nonces,
    mint_events,
    minter_settings,
    queue_mints,
    running_minter,
    status_counts,
    wait_until,
)

SENT_AND_MINED = ("confirmed", "finalized")
REVOKE_ROLE = load_artifact("AlbumNFT").function("revokeRole")


def revoke_minter_role(minter: Signer) -> str:
    return encode_call(REVOKE_ROLE, bytes.fromhex(MINTER_ROLE[2:]), minter.address)


async def test_hundred_queued_mints_all_finalize_once_with_contiguous_nonces(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    album_contract: str,
    pool: asyncpg.Pool,
    database_url: str,
) -> None:
    key_holder = await grant_minter_key(rpc, dev_signers[0], album_contract)
    start_nonce = to_int(await rpc.call("eth_getTransactionCount", [key_holder.address, "latest"]))
    queued = await queue_mints(pool, 100)
    settings = minter_settings(anvil.rpc_url, album_contract)
    counted_before = transitions_counted()

    async with running_minter(settings, database_url) as task:
        await wait_until(
            all_in(pool, ("confirmed", "finalized"), 100), "100 confirmed mints", task=task
        )
        assert REGISTRY.get_sample_value("discograph_nonce_gaps") == 0
        await mine_until_final(rpc)
        await wait_until(all_in(pool, ("finalized",), 100), "100 finalized mints", task=task)

    rows = await pool.fetch(
        "SELECT id, album_id, to_address, nonce, tx_hash, token_id, attempts FROM mint_requests"
    )
    nonces = await pool.fetch("SELECT nonce FROM mint_txs ORDER BY nonce")
    assert [r["nonce"] for r in nonces] == list(range(start_nonce, start_nonce + 100))
    assert all(r["attempts"] == 1 for r in rows)
    on_chain_nonces = await mined_nonces(rpc, [bytes(r["tx_hash"]) for r in rows])
    assert sorted(on_chain_nonces) == sorted(r["nonce"] for r in rows)
    assert len(set(on_chain_nonces)) == 100

    logs = await album_minted_logs(rpc, album_contract)
    assert len(logs) == 100
    assert {log["topics"][2] for log in logs} == {
        "0x" + album_id_to_bytes32(q.album_id).hex() for q in queued
    }
    token_ids = [int(r["token_id"]) for r in rows]
    assert len(set(token_ids)) == 100
    owners = await owners_on_chain(rpc, album_contract, token_ids)
    for row in rows:
        assert owners[int(row["token_id"])] == "0x" + bytes(row["to_address"]).hex()

    events = await mint_events(pool)
    assert all(
        events[str(q.mint_id)] == ["submitted", "mined", "confirmed", "finalized"] for q in queued
    )
    albums = await pool.fetch("SELECT status FROM albums")
    assert {a["status"] for a in albums} == {"minted"}
    signer_row = await pool.fetchrow("SELECT next_nonce FROM signers")
    assert signer_row["next_nonce"] == start_nonce + 100
    counted = transitions_counted()
    for step in TRANSITIONS:
        assert counted[step] - counted_before[step] == 100, step


TRANSITIONS = [
    ("queued", "submitted"),
    ("submitted", "mined"),
    ("mined", "confirmed"),
    ("confirmed", "finalized"),
]


def transitions_counted() -> dict[tuple[str, str], float]:
    return {
        (before, after): REGISTRY.get_sample_value(
            "discograph_mint_requests_total", {"from_status": before, "to_status": after}
        )
        or 0.0
        for before, after in TRANSITIONS
    }


async def test_revoked_minter_role_fails_the_mint_with_the_access_control_error(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    album_contract: str,
    pool: asyncpg.Pool,
    database_url: str,
) -> None:
    admin = dev_signers[0]
    key_holder = await grant_minter_key(rpc, admin, album_contract)
    await send_transaction(rpc, admin, to=album_contract, data=revoke_minter_role(key_holder))
    (queued,) = await queue_mints(pool, 1)
    settings = minter_settings(anvil.rpc_url, album_contract)

    async with running_minter(settings, database_url) as task:
        await wait_until(all_in(pool, ("failed",), 1), "the mint to fail", task=task)

    row = await pool.fetchrow("SELECT * FROM mint_requests WHERE id = $1", queued.mint_id)
    assert "AccessControlUnauthorizedAccount" in row["error"]
    assert key_holder.address.lower() in row["error"].lower()
    assert row["nonce"] is None
    assert row["tx_hash"] is None
    assert await pool.fetchval("SELECT count(*) FROM mint_txs") == 0
    assert await pool.fetchval("SELECT status FROM albums WHERE id = $1", queued.album_id) == (
        "failed"
    )
    assert (await mint_events(pool))[str(queued.mint_id)] == ["failed"]
    assert await album_minted_logs(rpc, album_contract) == []


async def test_mint_reverted_on_chain_fails_with_the_reason_replayed_at_its_block(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    album_contract: str,
    pool: asyncpg.Pool,
    database_url: str,
) -> None:
    admin = dev_signers[0]
    key_holder = await grant_minter_key(rpc, admin, album_contract)
    (queued,) = await queue_mints(pool, 1)
    settings = minter_settings(anvil.rpc_url, album_contract)
    await rpc.call("evm_setAutomine", [False])

    async with running_minter(settings, database_url) as task:
        await wait_until(all_in(pool, ("submitted",), 1), "the mint to be sent", task=task)
        # The role is revoked in the same block, ahead of the mint (a higher tip goes first).
        tx = await build_transaction(
            rpc, admin, to=album_contract, data=revoke_minter_role(key_holder)
        )
        tx["maxPriorityFeePerGas"] *= 10
        tx["maxFeePerGas"] *= 10
        raw, _ = admin.sign_transaction(tx)
        await rpc.call("eth_sendRawTransaction", [raw])
        await rpc.call("evm_mine")
        await wait_until(all_in(pool, ("failed",), 1), "the mint to fail", task=task)

    row = await pool.fetchrow("SELECT * FROM mint_requests WHERE id = $1", queued.mint_id)
    assert "AccessControlUnauthorizedAccount" in row["error"]
    receipt = await rpc.call("eth_getTransactionReceipt", ["0x" + bytes(row["tx_hash"]).hex()])
    assert to_int(receipt["status"]) == 0
    assert row["block_number"] == to_int(receipt["blockNumber"])
    assert await pool.fetchval("SELECT status FROM albums WHERE id = $1", queued.album_id) == (
        "failed"
    )
    assert (await mint_events(pool))[str(queued.mint_id)] == ["submitted", "failed"]


async def test_stuck_mint_is_replaced_with_higher_fees_and_one_variant_is_mined(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    album_contract: str,
    pool: asyncpg.Pool,
    database_url: str,
) -> None:
    await grant_minter_key(rpc, dev_signers[0], album_contract)
    (queued,) = await queue_mints(pool, 1)
    settings = minter_settings(anvil.rpc_url, album_contract, MINT_REPLACE_AFTER="0.5")
    await rpc.call("evm_setAutomine", [False])

    async def replaced() -> bool:
        return bool(await pool.fetchval("SELECT count(*) >= 2 FROM mint_txs"))

    async with running_minter(settings, database_url) as task:
        await wait_until(replaced, "a replacement", task=task)
        await rpc.call("evm_mine")
        await wait_until(all_in(pool, ("confirmed",), 1), "the mint to be confirmed", task=task)

    txs = await pool.fetch(
        "SELECT tx_hash, nonce, max_fee_per_gas, max_priority_fee_per_gas FROM mint_txs"
        " ORDER BY created_at"
    )
    assert len({t["nonce"] for t in txs}) == 1
    for before, after in itertools.pairwise(txs):
        assert after["max_fee_per_gas"] * 8 >= before["max_fee_per_gas"] * 9
        assert after["max_priority_fee_per_gas"] * 8 >= before["max_priority_fee_per_gas"] * 9
    receipts = [
        await rpc.call("eth_getTransactionReceipt", ["0x" + bytes(t["tx_hash"]).hex()]) for t in txs
    ]
    mined = [t for t, r in zip(txs, receipts, strict=True) if r is not None]
    assert len(mined) == 1
    row = await pool.fetchrow("SELECT * FROM mint_requests WHERE id = $1", queued.mint_id)
    assert bytes(row["tx_hash"]) == bytes(mined[0]["tx_hash"])
    assert row["attempts"] == len(txs)
    assert len(await album_minted_logs(rpc, album_contract)) == 1
    assert await status_counts(pool) == {"confirmed": 1}


async def test_second_minter_with_the_same_key_waits_as_hot_standby_then_takes_over(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    album_contract: str,
    pool: asyncpg.Pool,
    database_url: str,
) -> None:
    key_holder = await grant_minter_key(rpc, dev_signers[0], album_contract)
    settings = minter_settings(anvil.rpc_url, album_contract)
    key = lock_key(ANVIL_CHAIN_ID, parse_address(key_holder.address))
    await queue_mints(pool, 5, seed=1)
    stop_first, stop_second = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(run_minter(settings, database_url, stop=stop_first))
    second: asyncio.Task[int] | None = None
    try:
        await wait_until(all_in(pool, SENT_AND_MINED, 5), "the first minter's mints", task=first)
        second = asyncio.create_task(run_minter(settings, database_url, stop=stop_second))
        await queue_mints(pool, 5, seed=2)
        await wait_until(all_in(pool, SENT_AND_MINED, 10), "more mints", task=first)
        assert await advisory_lock_holders(pool, key) == 1
        assert not second.done()

        stop_first.set()
        assert await asyncio.wait_for(first, 10) == 0
        await queue_mints(pool, 5, seed=3)
        await wait_until(all_in(pool, SENT_AND_MINED, 15), "the standby's mints", task=second)
        assert await advisory_lock_holders(pool, key) == 1
    finally:
        stop_first.set()
        stop_second.set()
        for task in (first, second):
            if task is not None:
                assert await asyncio.wait_for(task, 10) == 0
    nonces = [r["nonce"] for r in await pool.fetch("SELECT nonce FROM mint_txs ORDER BY nonce")]
    assert nonces == list(range(nonces[0], nonces[0] + 15))
    assert len(await album_minted_logs(rpc, album_contract)) == 15


async def advisory_lock_holders(pool: asyncpg.Pool, key: int) -> int:
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return int(
        await pool.fetchval(
            """
            SELECT count(*) FROM pg_locks
            WHERE locktype = 'advisory' AND granted AND objsubid = 1
              AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND classid::bigint = $1 AND objid::bigint = $2
            """,
            unsigned >> 32,
            unsigned & 0xFFFFFFFF,
        )
    )
