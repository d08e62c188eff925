"""End to end: frontends POST mint requests to the API, the minter sends them, anvil mines
them, the indexer projects them, and reads (with `min_block`) show the minted albums."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import asyncpg

from chain.rpc import RpcClient, to_int
from chain.signer import Signer
from discograph.encoding import checksum_address
from discograph.localchain import Anvil
from tests.indexing import indexer_settings, live_indexer, owners_on_chain
from tests.minting import (
    all_in,
    grant_minter_key,
    mine_until_final,
    minter_settings,
    running_minter,
    wait_until,
)
from tests.test_api_writes import ADMIN, bearer, token

MINTS = 100


async def test_hundred_concurrent_mint_requests_through_the_api(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    album_contract: str,
    pool: asyncpg.Pool,
    database_url: str,
    api_url: str,
) -> None:
    minter = await grant_minter_key(rpc, dev_signers[0], album_contract)
    start_nonce = to_int(await rpc.call("eth_getTransactionCount", [minter.address, "latest"]))
    fan = dev_signers[-1].address
    async with aiohttp.ClientSession(api_url) as http:
        async with http.post("/artists", json={"name": "N", "wallet": fan}, headers=ADMIN) as r:
            artist = (await r.json())["id"]
        auth = bearer(token(artist))
        albums = []
        for i in range(MINTS):
            body = {"title": f"Album {i}", "tracks": [{"title": "Intro", "duration_s": 60}]}
            async with http.post("/albums", json=body, headers=auth) as r:
                assert r.status == 201, await r.text()
                albums.append((await r.json())["id"])

        async def request(album: str) -> dict[str, Any]:
            headers = auth | {"Idempotency-Key": f"mint-{album}"}
            async with http.post(f"/albums/{album}/mint", headers=headers) as r:
                assert r.status == 202, await r.text()
                return dict(await r.json())

        settings = minter_settings(anvil.rpc_url, album_contract)
        async with running_minter(settings, database_url) as task:
            accepted = await asyncio.gather(*(request(album) for album in albums))
            assert len({a["mint_id"] for a in accepted}) == MINTS
            await wait_until(
                all_in(pool, ("mined", "confirmed", "finalized"), MINTS),
                "100 mined mints",
                task=task,
                timeout=60,
            )
            await mine_until_final(rpc)
            await wait_until(all_in(pool, ("finalized",), MINTS), "100 finalized", task=task)
        mints = []
        for answer in accepted:
            async with http.get(f"/mints/{answer['mint_id']}", headers=auth) as r:
                mints.append(await r.json())
        assert {m["status"] for m in mints} == {"finalized"}
        # The lifecycle as announced: nothing indexed yet when they were queued (no chain id
        # for the API's `queued` event), then every step of the minter, in order.
        for mint in mints:
            steps = [event["status"] for event in mint["history"]]
            assert steps == ["submitted", "mined", "confirmed", "finalized"], steps
            assert mint["history"][1]["tx_hash"] == mint["tx_hash"]
        nonces = sorted(m["nonce"] for m in mints)
        assert nonces == list(range(start_nonce, start_nonce + MINTS))
        tokens = {int(m["token_id"]) for m in mints}
        assert len(tokens) == MINTS
        owners = await owners_on_chain(rpc, album_contract, sorted(tokens))
        assert set(owners.values()) == {fan.lower()}

        # The indexer projects them; a read with min_block waits for it.
        head = to_int(await rpc.call("eth_blockNumber"))
        settings = indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album_contract)
        async with live_indexer(database_url, settings):
            async with http.get(f"/owners/{fan}/nfts?limit=200&min_block={head}") as r:
                assert r.status == 200, await r.text()
                items = (await r.json())["items"]
            assert {int(i["token_id"]) for i in items} == tokens
            linked = {i["album_id"] for i in items}
            assert linked == set(albums)
            async with http.get(f"/albums/{albums[0]}?min_block={head}") as r:
                album = await r.json()
            assert album["status"] == "minted"
            assert album["nft"]["owner"] == checksum_address(bytes.fromhex(fan[2:]))
