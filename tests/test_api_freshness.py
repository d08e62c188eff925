"""Read-your-writes: `?min_block` waits for the indexer; X-Indexed-Block on every read."""

from __future__ import annotations

import random
import time
from typing import Any

import httpx

from chain.rpc import RpcClient
from chain.signer import Signer
from discograph.localchain import Anvil
from tests.indexing import ChainDriver, indexer_settings, live_indexer, wait_synced


async def test_min_block_waits_for_the_indexer_and_then_shows_the_write(
    anvil: Anvil, rpc: RpcClient, dev_signers: list[Signer], database_url: str, api_url: str
) -> None:
    driver = ChainDriver(rpc, dev_signers, random.Random(23))
    (album,) = await driver.deploy(1)
    contract, token_id = await driver.mint()
    settings = indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album, POLL_INTERVAL="0.2")
    async with live_indexer(database_url, settings) as task:
        await wait_synced(database_url, rpc, task=task)
        for _ in range(3):
            new_owner = dev_signers[random.Random(len(driver.owners)).randint(1, 4)]
            await driver.transfer((contract, token_id), to=new_owner)
            written = int(await rpc.call("eth_blockNumber"), 16)
            # Straight after the write, before the indexer could have seen it.
            async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
                response = await client.get(
                    f"/nfts/{contract}/{token_id}", params={"min_block": written}
                )
            assert response.status_code == 200, response.text
            assert int(response.headers["x-indexed-block"]) >= written
            assert response.json()["owner"] == new_owner.address


async def test_min_block_beyond_the_chain_times_out_with_503_and_retry_after(
    anvil: Anvil, rpc: RpcClient, dev_signers: list[Signer], database_url: str, api_url: str
) -> None:
    driver = ChainDriver(rpc, dev_signers, random.Random(29))
    (album,) = await driver.deploy(1)
    settings = indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album)
    async with live_indexer(database_url, settings) as task:
        indexed = await wait_synced(database_url, rpc, task=task)
        async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
            began = time.monotonic()
            response = await client.get("/status", params={"min_block": indexed + 1000})
            waited = time.monotonic() - began
            ok = await client.get("/status", params={"min_block": indexed})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["extra"]["indexed_block"] == indexed
    assert response.headers["x-indexed-block"] == str(indexed)
    assert 4.5 <= waited < 15  # bounded wait, not a hang
    assert ok.status_code == 200


async def test_bad_min_block_is_a_400_naming_it(api_client: Any) -> None:
    for value in ("-1", "abc", "1e3", "99999999999999999999"):
        response = await api_client.get("/status", params={"min_block": value})
        assert response.status_code == 400
        assert "min_block" in response.text


async def test_mixed_case_address_with_a_wrong_checksum_is_a_422(api_client: Any) -> None:
    wrong = "0x5FbDB2315678afecb367f032d93F642f64180aA3"  # one letter's case flipped
    response = await api_client.get(f"/owners/{wrong}/nfts")
    assert response.status_code == 422
    assert "address" in response.text
    lower = await api_client.get(f"/owners/{wrong.lower()}/nfts")
    assert lower.status_code == 200
