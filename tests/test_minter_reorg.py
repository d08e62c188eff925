"""A mint's outcome follows what the canonical chain finally says, across reorgs.

A revert is `failed` at once, but not final until its block is: a reorg that drops the block of
the revert (and with it the revert's cause) makes the minter send the same signed transaction
again, and the request ends `minted` if it succeeds on the new branch. The other way round too:
a mint that succeeded, was dropped by a reorg and reverts on the new branch ends `failed`. Real
anvil (its reorgs: `evm_snapshot` / `evm_revert`, then a longer branch) and real Postgres.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import asyncpg
import jwt
import pytest
from prometheus_client import REGISTRY

from chain.abi import encode_call, load_artifact
from chain.album import MINTER_ROLE, album_id_to_bytes32
from chain.rpc import RpcClient, to_int
from chain.signer import Signer
from chain.transact import build_transaction
from discograph.localchain import Anvil
from minter.node import ChainView
from tests.conftest import TEST_JWT_SECRET
from tests.indexing import (
    index_to_head,
    indexer_settings,
    live_indexer,
    owners_on_chain,
    wait_synced,
)
from tests.minting import (
    album_minted_logs,
    all_in,
    grant_minter_key,
    mine_until_final,
    mint_events,
    minter_settings,
    queue_mints,
    running_minter,
    wait_until,
)
from tests.test_minter_core import _mint, _plan, _receipt

REVOKE_ROLE = load_artifact("AlbumNFT").function("revokeRole")


def _admin_headers() -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": "ops@example", "role": "admin", "iat": now, "exp": now + 600}
    return {"Authorization": f"Bearer {jwt.encode(claims, TEST_JWT_SECRET, algorithm='HS256')}"}


async def _revoke_ahead_of_the_mint(
    rpc: RpcClient, admin: Signer, contract: str, key_holder: Signer
) -> None:
    """Revoke the minter's role in the next block, ahead of the mint (a higher tip goes first)."""
    data = encode_call(REVOKE_ROLE, bytes.fromhex(MINTER_ROLE[2:]), key_holder.address)
    tx = await build_transaction(rpc, admin, to=contract, data=data)
    tx["maxPriorityFeePerGas"] *= 10
    tx["maxFeePerGas"] *= 10
    raw, _ = admin.sign_transaction(tx)
    await rpc.call("eth_sendRawTransaction", [raw])


async def _row(pool: asyncpg.Pool, mint_id: uuid.UUID) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM mint_requests WHERE id = $1", mint_id)
    assert row is not None
    return row


async def _pending(rpc: RpcClient, address: str, count: int) -> bool:
    """Whether the node counts `count` transactions of `address`, its pool included."""
    return to_int(await rpc.call("eth_getTransactionCount", [address, "pending"])) == count


async def _nonces_line_up(rpc: RpcClient, pool: asyncpg.Pool, address: str) -> None:
    """No gap: the chain counts exactly the nonces the minter allocated."""
    mined = to_int(await rpc.call("eth_getTransactionCount", [address, "latest"]))
    assert await pool.fetchval("SELECT next_nonce FROM signers") == mined
    assert REGISTRY.get_sample_value("discograph_nonce_gaps") == 0


async def _mint_album(api_client: Any, album_id: uuid.UUID) -> Any:
    body = {"to": "0x" + "42" * 20}
    return await api_client.post(f"/albums/{album_id}/mint", json=body, headers=_admin_headers())


async def test_a_revert_a_reorg_drops_is_sent_again_and_the_request_ends_minted(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    album_contract: str,
    pool: asyncpg.Pool,
    database_url: str,
    api_client: Any,
) -> None:
    admin = dev_signers[0]
    key_holder = await grant_minter_key(rpc, admin, album_contract)
    (queued,) = await queue_mints(pool, 1)
    settings = minter_settings(anvil.rpc_url, album_contract)
    indexing = indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album_contract)
    await rpc.call("evm_setAutomine", [False])

    async with (
        live_indexer(database_url, indexing) as indexer,
        running_minter(settings, database_url) as task,
    ):
        await wait_until(all_in(pool, ("submitted",), 1), "the mint sent", task=task)
        nonce = (await _row(pool, queued.mint_id))["nonce"]
        fork = await rpc.call("evm_snapshot")
        await _revoke_ahead_of_the_mint(rpc, admin, album_contract, key_holder)
        await rpc.call("evm_mine")
        await wait_until(all_in(pool, ("failed",), 1), "the mint reverted", task=task)
        reverted = await _row(pool, queued.mint_id)
        assert "AccessControlUnauthorizedAccount" in reverted["error"]
        assert reverted["block_number"] is not None
        assert reverted["final_at"] is None  # its block may still be dropped
        album = await pool.fetchval("SELECT status FROM albums WHERE id = $1", queued.album_id)
        assert album == "failed"
        # Not final, so it still holds the album: another request is refused.
        assert (await _mint_album(api_client, queued.album_id)).status_code == 409

        # The reorg: back to before the revert's block, then a longer branch without the revoke.
        assert await rpc.call("evm_revert", [fork]) is True
        await wait_until(
            lambda: _pending(rpc, key_holder.address, nonce + 1),
            "the same transaction sent again",
            task=task,
        )
        for _ in range(3):
            await rpc.call("evm_mine")
        await wait_until(all_in(pool, ("confirmed",), 1), "the mint confirmed", task=task)
        await mine_until_final(rpc)
        await wait_until(all_in(pool, ("finalized",), 1), "the mint finalized", task=task)
        await _nonces_line_up(rpc, pool, key_holder.address)
        await wait_synced(database_url, rpc, task=indexer)

    row = await _row(pool, queued.mint_id)
    assert row["tx_hash"] == reverted["tx_hash"]  # the same signed transaction, sent again
    assert (row["nonce"], row["attempts"], row["error"]) == (nonce, 1, None)
    assert row["final_at"] is not None
    receipt = await rpc.call("eth_getTransactionReceipt", ["0x" + row["tx_hash"].hex()])
    assert to_int(receipt["status"]) == 1
    assert receipt["blockHash"] == "0x" + row["block_hash"].hex()
    assert to_int(receipt["blockNumber"]) == row["block_number"]
    assert row["block_hash"] != reverted["block_hash"]

    logs = await album_minted_logs(rpc, album_contract)
    assert [log["topics"][2] for log in logs] == ["0x" + album_id_to_bytes32(queued.album_id).hex()]
    assert to_int(logs[0]["topics"][1]) == int(row["token_id"])
    owners = await owners_on_chain(rpc, album_contract, [int(row["token_id"])])
    assert owners[int(row["token_id"])] == "0x" + queued.to.hex()
    album = (await api_client.get(f"/albums/{queued.album_id}")).json()
    assert album["status"] == "minted"
    assert album["nft"]["token_id"] == str(row["token_id"])
    assert album["nft"]["owner"].lower() == "0x" + queued.to.hex()
    assert album["nft"]["block_hash"] == receipt["blockHash"]

    statuses = ["submitted", "failed", "submitted", "mined", "confirmed", "finalized"]
    assert (await mint_events(pool))[str(queued.mint_id)] == statuses
    answer = await api_client.get(f"/mints/{queued.mint_id}", headers=_admin_headers())
    assert answer.status_code == 200
    mint = answer.json()
    assert mint["status"] == "finalized"
    assert mint["tx_hash"] == "0x" + row["tx_hash"].hex()
    assert mint["block_hash"] == receipt["blockHash"]
    assert mint["block_number"] == row["block_number"]
    assert mint["token_id"] == str(row["token_id"])
    assert mint["error"] is None
    assert [e["status"] for e in mint["history"]] == statuses
    assert [e["block_number"] for e in mint["history"]] == [
        None,
        reverted["block_number"],
        None,
        row["block_number"],
        row["block_number"],
        row["block_number"],
    ]
    assert {e["tx_hash"] for e in mint["history"]} == {mint["tx_hash"]}
    # Minted for good: the album takes no second (non re-mint) request.
    assert (await _mint_album(api_client, queued.album_id)).status_code == 409


@pytest.mark.parametrize("indexer_repairs", ["before the failure is final", "after it"])
async def test_a_success_a_reorg_drops_that_reverts_on_the_new_branch_ends_failed(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    album_contract: str,
    pool: asyncpg.Pool,
    database_url: str,
    api_client: Any,
    indexer_repairs: str,
) -> None:
    """The album ends `failed` whichever sees the reorg first: the indexer, which removes the
    album's `AlbumMinted` event, or the minter, which makes the failure final."""
    admin = dev_signers[0]
    key_holder = await grant_minter_key(rpc, admin, album_contract)
    (queued,) = await queue_mints(pool, 1)
    settings = minter_settings(anvil.rpc_url, album_contract)
    indexing = indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album_contract)
    await rpc.call("evm_setAutomine", [False])

    async def album_status() -> str:
        return str(await pool.fetchval("SELECT status FROM albums WHERE id = $1", queued.album_id))

    async with running_minter(settings, database_url) as task:
        await wait_until(all_in(pool, ("submitted",), 1), "the mint sent", task=task)
        nonce = (await _row(pool, queued.mint_id))["nonce"]
        fork = await rpc.call("evm_snapshot")
        await rpc.call("evm_mine")
        await wait_until(all_in(pool, ("confirmed",), 1), "the mint confirmed", task=task)
        minted = await _row(pool, queued.mint_id)
        await index_to_head(database_url, indexing)
        assert await album_status() == "minted"  # the indexer saw its AlbumMinted event

        # The new branch revokes the role ahead of the mint the minter sends again.
        assert await rpc.call("evm_revert", [fork]) is True
        await _revoke_ahead_of_the_mint(rpc, admin, album_contract, key_holder)
        await wait_until(
            lambda: _pending(rpc, key_holder.address, nonce + 1),
            "the same transaction sent again",
            task=task,
        )
        for _ in range(3):
            await rpc.call("evm_mine")
        await wait_until(all_in(pool, ("failed",), 1), "the mint reverted", task=task)
        assert (await _row(pool, queued.mint_id))["final_at"] is None
        assert await album_status() == "minted"  # the indexer has not seen the reorg yet
        if indexer_repairs == "before the failure is final":
            await index_to_head(database_url, indexing)
            assert await album_status() == "minting"  # the failure may still move
        await mine_until_final(rpc)

        async def settled() -> bool:
            return (await _row(pool, queued.mint_id))["final_at"] is not None

        await wait_until(settled, "the failure final", task=task)
        await _nonces_line_up(rpc, pool, key_holder.address)
    await index_to_head(database_url, indexing)

    row = await _row(pool, queued.mint_id)
    assert row["status"] == "failed"
    assert "AccessControlUnauthorizedAccount" in row["error"]
    assert (row["tx_hash"], row["nonce"], row["token_id"]) == (minted["tx_hash"], nonce, None)
    receipt = await rpc.call("eth_getTransactionReceipt", ["0x" + row["tx_hash"].hex()])
    assert to_int(receipt["status"]) == 0
    assert receipt["blockHash"] == "0x" + row["block_hash"].hex()
    assert row["block_hash"] != minted["block_hash"]
    assert await album_minted_logs(rpc, album_contract) == []
    album = (await api_client.get(f"/albums/{queued.album_id}")).json()
    assert (album["status"], album["nft"]) == ("failed", None)
    assert (await mint_events(pool))[str(queued.mint_id)] == [
        "submitted",
        "mined",
        "confirmed",
        "submitted",
        "failed",
    ]
    # Failed for good: the album is free for another request.
    assert (await _mint_album(api_client, queued.album_id)).status_code == 202


# --- the planner, without I/O ---------------------------------------------------------------


def test_a_revert_whose_block_was_replaced_goes_back_to_submitted() -> None:
    failed = _mint("failed")
    moved = _mint("failed")
    receipts = {moved.tx_hash: _receipt(moved.tx_hash, block_hash=b"\xdd" * 32, status=1)}
    plan = _plan([failed], {}, {100: b"\xcc" * 32})
    assert plan.reorged == [failed]
    assert _plan([moved], receipts, {100: b"\xbb" * 32}).reorged == [moved]


def test_a_revert_is_final_once_its_block_is_and_only_then() -> None:
    failed = _mint("failed")
    receipts = {failed.tx_hash: _receipt(failed.tx_hash, status=0)}
    canonical = {100: b"\xbb" * 32}
    waiting = _plan([failed], receipts, canonical)
    assert (waiting.settle, waiting.confirm, waiting.finalize, waiting.reorged) == ([], [], [], [])
    final_view = ChainView(head=200, finalized=100, mined_count=6, pending_count=6)
    final = _plan([failed], receipts, canonical, view=final_view)
    assert (final.settle, final.confirm, final.finalize) == ([failed.id], [], [])
    # A node without that block (lagging, or a shorter branch) is no evidence either way.
    assert _plan([failed], {}, {100: None}, view=final_view).settle == []
