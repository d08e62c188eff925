"""Backfill and tip-following against a real anvil: the projection equals what we sent."""

from __future__ import annotations

import random

import asyncpg

from chain.abi import encode_call, load_artifact
from chain.rpc import RpcClient
from chain.signer import Signer
from chain.transact import send_transaction
from discograph.localchain import Anvil
from tests.indexing import (
    ChainDriver,
    index_to_head,
    indexer_settings,
    live_indexer,
    owners_on_chain,
    projection,
    wait_synced,
)


async def _owners_in_db(database_url: str) -> dict[tuple[str, int], str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT contract, token_id, owner FROM nfts")
    finally:
        await conn.close()
    return {
        ("0x" + bytes(r["contract"]).hex(), int(r["token_id"])): "0x" + bytes(r["owner"]).hex()
        for r in rows
    }


async def test_backfill_across_three_contracts_equals_what_was_sent(
    anvil: Anvil, rpc: RpcClient, dev_signers: list[Signer], database_url: str
) -> None:
    driver = ChainDriver(rpc, dev_signers, random.Random(7))
    album, *extra = await driver.deploy(3)
    await driver.random_activity(60)
    await rpc.call("anvil_mine", ["0x50"])  # push the activity below anvil's finalized tag
    settings = indexer_settings(
        anvil.rpc_url, ALBUM_CONTRACT=album, EXTRA_CONTRACTS=",".join(extra)
    )
    await index_to_head(database_url, settings)

    expected = {(c.lower(), t): owner for (c, t), owner in driver.owners.items()}
    assert await _owners_in_db(database_url) == expected
    for contract in driver.contracts:
        tokens = sorted(t for c, t in driver.owners if c == contract)
        on_chain = await owners_on_chain(rpc, contract, tokens)
        assert {t: driver.owners[(contract, t)] for t in tokens} == on_chain
    conn = await asyncpg.connect(database_url)
    try:
        linked = await conn.fetch(
            "SELECT contract, token_id, album_id FROM nfts WHERE album_id IS NOT NULL"
        )
        transfers = await conn.fetchval("SELECT count(*) FROM transfers")
    finally:
        await conn.close()
    # Album links only for the album contract; the others are indexed for Transfer only.
    assert {("0x" + bytes(r["contract"]).hex(), int(r["token_id"])) for r in linked} == {
        (c.lower(), t) for c, t in driver.owners if c == album
    }
    for r in linked:
        assert r["album_id"] == driver.albums[(album, int(r["token_id"]))]
    assert transfers >= len(driver.owners)


async def test_live_indexing_matches_a_fresh_index(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    database_url: str,
    second_database_url: str,
) -> None:
    driver = ChainDriver(rpc, dev_signers, random.Random(11))
    (album,) = await driver.deploy(1)
    settings = indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album)
    async with live_indexer(database_url, settings) as task:
        for _ in range(5):
            await driver.random_activity(6)
            await wait_synced(database_url, rpc, task=task)
    await index_to_head(second_database_url, settings)
    assert await projection(database_url) == await projection(second_database_url)
    assert await _owners_in_db(database_url) == {
        (c.lower(), t): o for (c, t), o in driver.owners.items()
    }


async def test_metadata_updates_refresh_the_uri_and_a_reorg_restores_the_previous_one(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    database_url: str,
    second_database_url: str,
) -> None:
    driver = ChainDriver(rpc, dev_signers, random.Random(5))
    (album,) = await driver.deploy(1)
    _, token_id = await driver.mint()
    settings = indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album)
    set_uri = load_artifact("AlbumNFT").function("setTokenURI")

    async def uri_in_db() -> str:
        conn = await asyncpg.connect(database_url)
        try:
            return str(
                await conn.fetchval("SELECT token_uri FROM nfts WHERE token_id = $1", token_id)
            )
        finally:
            await conn.close()

    async with live_indexer(database_url, settings) as task:
        await wait_synced(database_url, rpc, task=task)
        original = await uri_in_db()
        assert original.startswith("ipfs://test/")
        await send_transaction(
            rpc, driver.minter, to=album, data=encode_call(set_uri, token_id, "ipfs://v2.json")
        )
        await wait_synced(database_url, rpc, task=task)
        assert await uri_in_db() == "ipfs://v2.json"

        snapshot = await rpc.call("evm_snapshot")
        await send_transaction(
            rpc, driver.minter, to=album, data=encode_call(set_uri, token_id, "ipfs://v3.json")
        )
        await wait_synced(database_url, rpc, task=task)
        assert await uri_in_db() == "ipfs://v3.json"
        await rpc.call("evm_revert", [snapshot])
        await rpc.call("anvil_mine", ["0x2"])  # a longer branch without the update
        await wait_synced(database_url, rpc, task=task)
        assert await uri_in_db() == "ipfs://v2.json"
    await index_to_head(second_database_url, settings)
    assert await projection(database_url) == await projection(second_database_url)


async def test_blocks_backfilled_after_a_downtime_are_announced_on_the_feed(
    anvil: Anvil, rpc: RpcClient, dev_signers: list[Signer], database_url: str
) -> None:
    driver = ChainDriver(rpc, dev_signers, random.Random(17))
    (album,) = await driver.deploy(1)
    settings = indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album)
    async with live_indexer(database_url, settings) as task:
        await driver.random_activity(4)
        tip = await wait_synced(database_url, rpc, task=task)
    # Down: activity that becomes final (backfilled on restart, below anvil's finalized tag).
    await driver.random_activity(6)
    await rpc.call("anvil_mine", ["0x50"])
    await index_to_head(database_url, settings)
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT block_hash, log_index FROM transfers WHERE block_number > $1", tip
        )
        announced = await conn.fetch(
            "SELECT payload->>'block_hash' AS h, (payload->>'log_index')::int AS i FROM outbox"
            " WHERE kind = 'transfer' AND (payload->>'block_number')::bigint > $1",
            tip,
        )
    finally:
        await conn.close()
    assert len(rows) >= 6
    assert {("0x" + bytes(r["block_hash"]).hex(), r["log_index"]) for r in rows} == {
        (r["h"], r["i"]) for r in announced
    }
