"""NFT, owner, transfer and holder reads against a real indexed anvil chain.

Values are compared with what the node says (`ownerOf`, `tokenURI`, `balanceOf` through
eth_call, at `latest` or at a block number); lists are walked page by page; point-in-time and
finality answers are checked against historical eth_calls; a reorg leaves no orphaned history;
malformed input is a 4xx naming the parameter; the hot queries are index scans at 100k rows.
"""

from __future__ import annotations

import json
import random
from typing import Any

import asyncpg
import pytest

from chain.album import call_view
from chain.rpc import RpcClient
from chain.signer import Signer
from db import chain_reads
from discograph.encoding import checksum_address, parse_address
from discograph.localchain import Anvil
from tests.indexing import (
    ZERO,
    ChainDriver,
    index_to_head,
    indexer_settings,
    live_indexer,
    wait_synced,
)

TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"


async def _walk(client: Any, path: str, limit: int = 2, **query: Any) -> list[dict[str, Any]]:
    """Every item of a paginated list, following next_cursor; checks page sizes and the end."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        q = {**query, "limit": limit}
        if cursor is not None:
            q["cursor"] = cursor
        response = await client.get(path, params=q)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"items", "next_cursor"}
        assert len(body["items"]) <= limit
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
        assert len(body["items"]) == limit
    raise AssertionError("pagination never ended")


async def _owner_of(
    rpc: RpcClient, contract: str, token_id: int, block: str | int = "latest"
) -> str:
    (owner,) = await call_view(rpc, contract, "ownerOf", token_id, block=block)
    return str(owner).lower()


async def _balance_of(
    rpc: RpcClient, contract: str, owner: str, block: str | int = "latest"
) -> int:
    (balance,) = await call_view(rpc, contract, "balanceOf", owner, block=block)
    return int(balance)


async def _block_hash(rpc: RpcClient, number: int) -> str:
    block = await rpc.call("eth_getBlockByNumber", [hex(number), False])
    return str(block["hash"])


async def _block_number(rpc: RpcClient) -> int:
    return int(await rpc.call("eth_blockNumber"), 16)


async def _indexed_chain(
    anvil: Anvil, rpc: RpcClient, dev_signers: list[Signer], database_url: str, seed: int = 7
) -> tuple[ChainDriver, str, list[int]]:
    """One AlbumNFT with 10 tokens minted to a few accounts, then transfers; indexed to head.
    Returns the driver, the contract and the block number after each operation."""
    driver = ChainDriver(rpc, dev_signers[:4], random.Random(seed))
    (album,) = await driver.deploy(1)
    blocks = []
    for _ in range(10):
        await driver.mint(album)
        blocks.append(await _block_number(rpc))
    for _ in range(8):
        await driver.transfer()
        blocks.append(await _block_number(rpc))
    await index_to_head(database_url, indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album))
    return driver, album, blocks


async def test_nft_reads_equal_the_chain_with_provenance(
    anvil: Anvil, rpc: RpcClient, dev_signers: list[Signer], database_url: str, api_client: Any
) -> None:
    driver, album, _ = await _indexed_chain(anvil, rpc, dev_signers, database_url)
    status = (await api_client.get("/status")).json()
    finalized, safe = status["finalized_block"], status["safe_block"]

    def finality(block: int) -> str:
        if finalized is not None and block <= finalized:
            return "finalized"
        if safe is not None and block <= safe:
            return "safe"
        return "unsafe"

    for (contract, token_id), owner in sorted(driver.owners.items()):
        response = await api_client.get(f"/nfts/{contract.lower()}/{token_id}")
        assert response.status_code == 200, response.text
        assert response.headers["x-indexed-block"] == str(status["indexed_block"])
        nft = response.json()
        assert nft["owner"] == checksum_address(parse_address(owner))
        assert nft["owner"].lower() == await _owner_of(rpc, contract, token_id)
        (uri,) = await call_view(rpc, contract, "tokenURI", token_id)
        assert nft["token_uri"] == uri
        assert nft["album_id"] == str(driver.albums[(contract, token_id)])
        assert nft["contract"] == contract
        assert nft["token_id"] == str(token_id)
        assert nft["chain_id"] == 31337

        history = await _walk(api_client, f"/nfts/{contract}/{token_id}/transfers")
        assert history[-1]["from"] == ZERO
        assert history[0]["to"] == nft["owner"]
        mint = await rpc.call("eth_getTransactionReceipt", [history[-1]["tx_hash"]])
        assert nft["minted_block"] == int(mint["blockNumber"], 16)
        assert nft["minted_tx"] == history[-1]["tx_hash"]
        last = nft["last_transfer"]
        assert last == {
            "block_number": history[0]["block_number"],
            "tx_hash": history[0]["tx_hash"],
            "from": history[0]["from"],
            "to": history[0]["to"],
        }
        # Provenance: the block of the last event applied, its canonical hash, its finality.
        assert nft["block_number"] == history[0]["block_number"]
        assert nft["block_hash"] == await _block_hash(rpc, nft["block_number"])
        assert nft["finality"] == finality(nft["block_number"])
        for item in history:
            assert item["block_hash"] == await _block_hash(rpc, item["block_number"])
            assert item["finality"] == finality(item["block_number"])
            assert item["contract"] == contract
            assert item["token_id"] == str(token_id)
        keys = [(i["block_number"], i["log_index"]) for i in history]
        assert keys == sorted(keys, reverse=True)

    missing = await api_client.get(f"/nfts/{album}/999999")
    assert missing.status_code == 404
    assert missing.json()["status_code"] == 404


async def test_lists_walk_every_item_once_and_equal_the_chain(
    anvil: Anvil, rpc: RpcClient, dev_signers: list[Signer], database_url: str, api_client: Any
) -> None:
    driver, album, _ = await _indexed_chain(anvil, rpc, dev_signers, database_url, seed=11)
    signers = [s.address for s in dev_signers[:4]]

    # Owners: exactly the tokens whose ownerOf is the owner, balanceOf of them, in key order.
    walked_tokens = []
    for address in signers:
        items = await _walk(api_client, f"/owners/{address}/nfts")
        expected = sorted(t for (c, t), o in driver.owners.items() if o == address.lower())
        assert [int(i["token_id"]) for i in items] == expected
        assert len(items) == await _balance_of(rpc, album, address)
        for item in items:
            assert item["owner"] == address
            assert item["owner"].lower() == await _owner_of(rpc, album, int(item["token_id"]))
        walked_tokens += [int(i["token_id"]) for i in items]
    assert sorted(walked_tokens) == sorted(t for _, t in driver.owners)

    # Holders: balanceOf for each, count desc then owner; the zero address never appears.
    holders = await _walk(api_client, f"/contracts/{album}/holders")
    assert ZERO not in [h["owner"] for h in holders]
    for holder in holders:
        assert holder["count"] == await _balance_of(rpc, album, holder["owner"])
    order = [(-h["count"], bytes.fromhex(h["owner"][2:])) for h in holders]
    assert order == sorted(order)
    assert sum(h["count"] for h in holders) == len(driver.owners)

    # Global transfers: exactly the Transfer logs of the node, newest first, each once.
    logs = await rpc.call(
        "eth_getLogs",
        [{"address": album, "fromBlock": "0x0", "toBlock": "latest", "topics": [TRANSFER_TOPIC]}],
    )
    on_chain = [
        (int(lg["blockNumber"], 16), int(lg["logIndex"], 16), lg["blockHash"]) for lg in logs
    ]
    walked = await _walk(api_client, "/transfers")
    assert [(t["block_number"], t["log_index"], t["block_hash"]) for t in walked] == sorted(
        on_chain, reverse=True
    )
    assert len(walked) == 18

    # Address filter = either side; contract + token id filter = that token's history.
    for address in signers[:2]:
        mine = await _walk(api_client, "/transfers", address=address.lower())
        assert mine == [t for t in walked if address in (t["from"], t["to"])]
    token = sorted(driver.owners)[0][1]
    filtered = await _walk(api_client, "/transfers", contract=album, token_id=str(token))
    assert filtered == await _walk(api_client, f"/nfts/{album}/{token}/transfers")
    assert filtered == [t for t in walked if t["token_id"] == str(token)]
    window = await _walk(
        api_client,
        "/transfers",
        from_block=walked[10]["block_number"],
        to_block=walked[3]["block_number"],
    )
    assert window == walked[3:11]


async def test_at_block_equals_owner_of_at_that_block(
    anvil: Anvil, rpc: RpcClient, dev_signers: list[Signer], database_url: str, api_client: Any
) -> None:
    driver, album, blocks = await _indexed_chain(anvil, rpc, dev_signers, database_url, seed=5)
    tokens = sorted(t for _, t in driver.owners)
    signers = [s.address for s in dev_signers[:4]]
    minted_at = {}
    for token in tokens:
        history = await _walk(api_client, f"/nfts/{album}/{token}/transfers", limit=50)
        minted_at[token] = history[-1]["block_number"]
    for block in (blocks[2], blocks[9], blocks[12], blocks[15], blocks[-1]):
        for token in tokens:
            response = await api_client.get(f"/nfts/{album}/{token}", params={"at_block": block})
            if minted_at[token] > block:
                assert response.status_code == 404
                continue
            assert response.status_code == 200, response.text
            nft = response.json()
            assert nft["owner"].lower() == await _owner_of(rpc, album, token, block)
            assert nft["block_number"] <= block
            assert nft["block_hash"] == await _block_hash(rpc, nft["block_number"])
        for address in signers:
            owned = await _walk(api_client, f"/owners/{address}/nfts", at_block=block)
            assert len(owned) == await _balance_of(rpc, album, address, block)
            for item in owned:
                assert await _owner_of(rpc, album, int(item["token_id"]), block) == address.lower()
        holders = await _walk(api_client, f"/contracts/{album}/holders", at_block=block)
        for holder in holders:
            assert holder["count"] == await _balance_of(rpc, album, holder["owner"], block)
        assert sum(h["count"] for h in holders) == sum(1 for t in tokens if minted_at[t] <= block)

    indexed = blocks[-1]
    for path in (
        f"/nfts/{album}/{tokens[0]}",
        f"/owners/{signers[0]}/nfts",
        f"/contracts/{album}/holders",
    ):
        response = await api_client.get(path, params={"at_block": indexed + 1})
        assert response.status_code == 409
        body = response.json()
        assert body["status_code"] == 409
        assert body["extra"] == {"indexed_block": indexed}
        assert "at_block" in body["detail"]


async def test_finality_finalized_answers_as_of_the_finalized_block(
    anvil: Anvil, rpc: RpcClient, dev_signers: list[Signer], database_url: str, api_client: Any
) -> None:
    driver = ChainDriver(rpc, dev_signers[:3], random.Random(17))
    (album,) = await driver.deploy(1)
    for _ in range(4):
        await driver.mint(album)
    await rpc.call("anvil_mine", ["0x50"])  # push the mints below anvil's finalized block
    moved = sorted(driver.owners)[0]
    before = driver.owners[moved]
    after = next(s for s in dev_signers[:3] if s.address.lower() != before)
    await driver.transfer(moved, to=after)
    await index_to_head(database_url, indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album))
    status = (await api_client.get("/status")).json()
    finalized = status["finalized_block"]
    assert finalized is not None
    assert finalized < status["indexed_block"]

    token = moved[1]
    latest = (await api_client.get(f"/nfts/{album}/{token}")).json()
    final = (
        await api_client.get(f"/nfts/{album}/{token}", params={"finality": "finalized"})
    ).json()
    at = (await api_client.get(f"/nfts/{album}/{token}", params={"at_block": finalized})).json()
    assert latest["owner"] == after.address
    assert latest["finality"] == "unsafe"
    assert final == at
    assert final["owner"].lower() == before == await _owner_of(rpc, album, token, finalized)
    assert final["finality"] == "finalized"
    assert final["block_number"] <= finalized

    for address in {before, after.address.lower()}:
        owned = await _walk(api_client, f"/owners/{address}/nfts", finality="finalized")
        assert len(owned) == await _balance_of(rpc, album, address, finalized)
        assert all(i["finality"] == "finalized" for i in owned)
    holders = await _walk(api_client, f"/contracts/{album}/holders", finality="finalized")
    assert holders == await _walk(api_client, f"/contracts/{album}/holders", at_block=finalized)
    latest_holders = await _walk(api_client, f"/contracts/{album}/holders", finality="latest")
    assert latest_holders == await _walk(api_client, f"/contracts/{album}/holders")
    assert latest_holders != holders


async def test_history_has_no_orphaned_rows_after_a_reorg(
    anvil: Anvil, rpc: RpcClient, dev_signers: list[Signer], database_url: str, api_client: Any
) -> None:
    driver = ChainDriver(rpc, dev_signers[:4], random.Random(23))
    (album,) = await driver.deploy(1)
    for _ in range(4):
        await driver.mint(album)
    settings = indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album)
    async with live_indexer(database_url, settings) as task:
        await wait_synced(database_url, rpc, task=task)
        snapshot = await rpc.call("evm_snapshot")
        saved = driver.snapshot()
        for _ in range(3):
            await driver.transfer()
        await wait_synced(database_url, rpc, task=task)
        orphaned = {t["tx_hash"] for t in await _walk(api_client, "/transfers", limit=50)}
        assert await rpc.call("evm_revert", [snapshot]) is True
        driver.restore(saved)
        for _ in range(3):
            await driver.transfer()
        await rpc.call("anvil_mine", ["0x1"])
        await wait_synced(database_url, rpc, task=task)

    walked = await _walk(api_client, "/transfers", limit=3)
    canonical = {t["tx_hash"] for t in walked}
    assert len(walked) == 7
    for item in walked:
        assert item["block_hash"] == await _block_hash(rpc, item["block_number"])
        receipt = await rpc.call("eth_getTransactionReceipt", [item["tx_hash"]])
        assert receipt is not None
        assert receipt["blockHash"] == item["block_hash"]
    gone = orphaned - canonical
    assert gone, "the fork replaced some transfers"
    for tx_hash in gone:
        assert await rpc.call("eth_getTransactionReceipt", [tx_hash]) is None
    for (contract, token_id), owner in driver.owners.items():
        nft = (await api_client.get(f"/nfts/{contract}/{token_id}")).json()
        assert nft["owner"].lower() == owner == await _owner_of(rpc, contract, token_id)
        assert nft["block_hash"] == await _block_hash(rpc, nft["block_number"])
        history = await _walk(api_client, f"/nfts/{contract}/{token_id}/transfers")
        assert {h["tx_hash"] for h in history} <= canonical
        assert history[0]["to"].lower() == owner


def _bad_requests(album: str, token: int) -> list[tuple[str, dict[str, Any], str]]:
    """(path, query, parameter the error must name)."""
    good = checksum_address(parse_address(album))
    wrong_case = good[:2] + "".join(
        c.lower() if c.isupper() else c.upper() for c in good[2:]
    )  # mixed case, not the checksum
    if wrong_case[2:] in (wrong_case[2:].lower(), wrong_case[2:].upper()):
        wrong_case = good[:-1] + ("a" if good[-1] != "a" else "b")
    cursor_json = "eyJhIjogMX0"  # base64 of {"a": 1}
    cursor_list = "WzEsMiwzXQ"  # base64 of [1,2,3]
    cursor_types = "WyJ4IiwieSJd"  # base64 of ["x","y"]
    nft = f"/nfts/{album}/{token}"
    owner = f"/owners/{album}/nfts"
    holders = f"/contracts/{album}/holders"
    history = f"/nfts/{album}/{token}/transfers"
    return [
        (f"/nfts/{wrong_case}/{token}", {}, "contract"),
        (f"/nfts/{album[2:]}/{token}", {}, "contract"),
        (f"/nfts/{album[:-2]}/{token}", {}, "contract"),
        (f"/nfts/0x{'zz' * 20}/{token}", {}, "contract"),
        (f"/nfts/{album}/-1", {}, "token_id"),
        (f"/nfts/{album}/0x10", {}, "token_id"),
        (f"/nfts/{album}/{2**256}", {}, "token_id"),
        (f"/nfts/{album}/{'9' * 100}", {}, "token_id"),
        (f"/nfts/{album}/abc", {}, "token_id"),
        (f"/nfts/{album}/١٢٣", {}, "token_id"),
        (f"/nfts/{album}/1.5", {}, "token_id"),
        (f"/owners/{wrong_case}/nfts", {}, "address"),
        (f"/owners/{album[2:]}/nfts", {}, "address"),
        ("/contracts/0x1234/holders", {}, "contract"),
        (history, {"limit": 0}, "limit"),
        (history, {"limit": 201}, "limit"),
        (owner, {"limit": 1000}, "limit"),
        (holders, {"limit": "abc"}, "limit"),
        ("/transfers", {"limit": -5}, "limit"),
        (history, {"cursor": "!!!not-base64!!!"}, "cursor"),
        (history, {"cursor": "c29tZSByYW5kb20gYnl0ZXM"}, "cursor"),
        (history, {"cursor": cursor_json}, "cursor"),
        (owner, {"cursor": cursor_list}, "cursor"),
        (owner, {"cursor": cursor_types}, "cursor"),
        (holders, {"cursor": cursor_types}, "cursor"),
        ("/transfers", {"cursor": cursor_types}, "cursor"),
        (nft, {"bogus": "1"}, "bogus"),
        (owner, {"page": "2"}, "page"),
        (holders, {"offset": "10"}, "offset"),
        (history, {"at_block": "5"}, "at_block"),
        ("/transfers", {"sort": "asc"}, "sort"),
        (nft, {"at_block": -1}, "at_block"),
        (nft, {"at_block": "abc"}, "at_block"),
        (owner, {"at_block": 2**70}, "at_block"),
        (nft, {"finality": "maybe"}, "finality"),
        (holders, {"finality": "FINALIZED"}, "finality"),
        (nft, {"finality": "safe", "at_block": 1}, "finality"),
        ("/transfers", {"token_id": str(token)}, "token_id"),
        ("/transfers", {"contract": album, "token_id": "-3"}, "token_id"),
        ("/transfers", {"address": "0xabc"}, "address"),
        ("/transfers", {"contract": wrong_case}, "contract"),
        ("/transfers", {"from_block": "x"}, "from_block"),
        ("/transfers", {"to_block": -1}, "to_block"),
        ("/transfers", {"from_block": 2**64}, "from_block"),
    ]


async def test_malformed_requests_are_4xx_naming_the_parameter(
    anvil: Anvil, rpc: RpcClient, dev_signers: list[Signer], database_url: str, api_client: Any
) -> None:
    driver = ChainDriver(rpc, dev_signers[:2], random.Random(1))
    (album,) = await driver.deploy(1)
    _, token = await driver.mint(album)
    await index_to_head(database_url, indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album))
    table = _bad_requests(album, token)
    assert len(table) >= 30
    failures = []
    for path, query, name in table:
        response = await api_client.get(path, params=query)
        body = (
            response.json()
            if response.headers.get("content-type", "").startswith("application/json")
            else None
        )
        named = body is not None and (
            name in str(body.get("detail", "")) or name in json.dumps(body.get("extra"))
        )
        if not (400 <= response.status_code < 500) or not named:
            failures.append((path, query, response.status_code, response.text[:200]))
    assert not failures, failures
    # The same routes with good values answer.
    assert (await api_client.get(f"/nfts/{album}/{token}")).status_code == 200
    assert (await api_client.get(f"/nfts/{album.lower()}/{token}")).status_code == 200
    assert (
        await api_client.get(f"/nfts/{album.upper().replace('0X', '0x')}/{token}")
    ).status_code == 200


def _seq_scans(plan: Any) -> list[str]:
    found = []
    if isinstance(plan, dict):
        if plan.get("Node Type") == "Seq Scan" and plan.get("Relation Name") in (
            "transfers",
            "nfts",
        ):
            found.append(plan["Relation Name"])
        for value in plan.values():
            found += _seq_scans(value)
    elif isinstance(plan, list):
        for value in plan:
            found += _seq_scans(value)
    return found


@pytest.mark.slow
async def test_hot_queries_are_index_scans_at_100k_transfers(database_url: str) -> None:
    chain_id, owners, tokens, per_token = 1, 200, 20_000, 5
    contract = bytes.fromhex("ab" * 20)
    conn = await asyncpg.connect(database_url)
    try:
        # Token t moves owner(t, 0) -> ... -> owner(t, 4); addresses are 1..200 as 20 bytes.
        await conn.execute(
            """
            INSERT INTO transfers (chain_id, contract, block_number, block_hash, log_index,
                                   tx_hash, from_address, to_address, token_id)
            SELECT $1, $2, s.i / 4 + 1, decode(lpad(to_hex(s.i / 4 + 1), 64, '0'), 'hex'),
                   s.i % 4, decode(lpad(to_hex(s.i), 64, '0'), 'hex'),
                   CASE WHEN s.k = 0 THEN decode(repeat('00', 20), 'hex')
                        ELSE decode(lpad(to_hex((s.t * 7 + s.k - 1) % $3 + 1), 40, '0'), 'hex')
                   END,
                   decode(lpad(to_hex((s.t * 7 + s.k) % $3 + 1), 40, '0'), 'hex'),
                   s.t
            FROM (SELECT g AS i, g % $4 AS t, g / $4 AS k FROM generate_series(0, $5 - 1) AS g) s
            """,
            chain_id,
            contract,
            owners,
            tokens,
            tokens * per_token,
        )
        await conn.execute(
            """
            INSERT INTO nfts (chain_id, contract, token_id, owner, minted_block, minted_tx,
                              updated_block, updated_block_hash, updated_log_index,
                              last_transfer_block, last_transfer_tx, last_transfer_from)
            SELECT DISTINCT ON (token_id) chain_id, contract, token_id, to_address, 1, tx_hash,
                   block_number, block_hash, log_index, block_number, tx_hash, from_address
            FROM transfers ORDER BY token_id, block_number DESC, log_index DESC
            """
        )
        await conn.execute("ANALYZE transfers")
        await conn.execute("ANALYZE nfts")
        assert await conn.fetchval("SELECT count(*) FROM transfers") >= 100_000
        assert await conn.fetchval("SELECT count(*) FROM nfts") == tokens

        owner = bytes.fromhex(f"{5:040x}")
        queries = {
            "owner nfts": chain_reads.owner_nfts_query(chain_id, owner, None, None, 51),
            "owner nfts, next page": chain_reads.owner_nfts_query(
                chain_id, owner, None, (contract, "1000"), 51
            ),
            "token history": chain_reads.token_transfers_query(
                chain_id, contract, "1234", None, 51
            ),
            "token history, next page": chain_reads.token_transfers_query(
                chain_id, contract, "1234", (20_000, 1), 51
            ),
            "transfers by address": chain_reads.transfers_query(
                chain_id,
                contract=None,
                address=owner,
                token_id=None,
                from_block=None,
                to_block=None,
                before=None,
                limit=51,
            ),
            "transfers by address, next page": chain_reads.transfers_query(
                chain_id,
                contract=contract,
                address=owner,
                token_id=None,
                from_block=10,
                to_block=None,
                before=(20_000, 2),
                limit=51,
            ),
            "nft": chain_reads.nft_query(chain_id, contract, "77", None),
            "nft at block": chain_reads.nft_query(chain_id, contract, "77", 10_000),
        }
        for name, (sql, args) in queries.items():
            plan = json.loads(await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args))
            assert _seq_scans(plan) == [], f"{name}: {json.dumps(plan)[:2000]}"
            rows = await conn.fetch(sql, *args)
            assert rows, name
    finally:
        await conn.close()
