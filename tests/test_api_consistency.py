"""The read API stays consistent with the chain while the chain moves under it.

- `?finality=finalized` never shows a fact that a later reorg takes back: every finalized
  answer (owner per token, tokens per owner, with its `block_number`/`block_hash` provenance)
  is asked again after a reorg above the finalized block and must be unchanged, on canonical
  blocks, and equal to `ownerOf` at that block on the node.
- Keyset pagination is stable while the live indexer commits new mints and transfers between
  pages: every item that existed at the start appears exactly once; nothing appears twice.
- `?at_block=N` answers of `/owners/{a}/nfts` equal `ownerOf` called at block N on the node.

`DISCOGRAPH_FINALITY_ROUNDS` raises the number of reorg rounds (default 20),
`DISCOGRAPH_CONSISTENCY_SEED` picks another seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx

from chain.abi import encode_call, load_artifact
from chain.rpc import RpcClient
from chain.signer import Signer
from discograph.localchain import Anvil
from tests.indexing import ChainDriver, index_to_head, indexer_settings, live_indexer, wait_synced

ROUNDS = int(os.environ.get("DISCOGRAPH_FINALITY_ROUNDS", "20"))
SEED = int(os.environ.get("DISCOGRAPH_CONSISTENCY_SEED", "20260511"))
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
ZERO_TOPIC = "0x" + "00" * 32


# --- helpers -------------------------------------------------------------------------------


async def _walk(
    client: Any, path: str, limit: int, headers_seen: list[int] | None = None, **query: Any
) -> list[dict[str, Any]]:
    """Every item of a paginated list, following `next_cursor`."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        params = {**query, "limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        response = await client.get(path, params=params)
        assert response.status_code == 200, (path, params, response.text)
        if headers_seen is not None:
            headers_seen.append(int(response.headers["x-indexed-block"]))
        body = response.json()
        assert len(body["items"]) <= limit
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError(f"{path}: pagination never ended")


async def _head(rpc: RpcClient) -> int:
    return int(await rpc.call("eth_blockNumber"), 16)


async def _hashes(rpc: RpcClient, numbers: list[int]) -> dict[int, str]:
    """Canonical block hash of each block number, as the node says now."""
    blocks = await rpc.batch([("eth_getBlockByNumber", [hex(n), False]) for n in numbers])
    return {n: str(b["hash"]) for n, b in zip(numbers, blocks, strict=True)}


async def _owners_at(
    rpc: RpcClient, keys: list[tuple[str, int]], block: int
) -> dict[tuple[str, int], str]:
    """`ownerOf` of each (contract, token) at `block` (eth_call with that block number)."""
    function = load_artifact("AlbumNFT").function("ownerOf")
    answers = await rpc.batch(
        [("eth_call", [{"to": c, "data": encode_call(function, t)}, hex(block)]) for c, t in keys]
    )
    return {k: "0x" + a[-40:] for k, a in zip(keys, answers, strict=True)}


async def _checkpoint(database_url: str) -> tuple[int, int | None]:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT block_number, finalized_block FROM checkpoints")
    finally:
        await conn.close()
    return int(row["block_number"]), row["finalized_block"]


async def _settle(
    database_url: str, rpc: RpcClient, task: asyncio.Task[Any], timeout: float = 20.0
) -> tuple[int, int]:
    """Wait until the indexer holds the node's head and the node's finalized block number
    (the chain is idle); returns (head, finalized)."""
    deadline = time.monotonic() + timeout
    while True:
        head = await wait_synced(database_url, rpc, task=task)
        node_final = int(
            (await rpc.call("eth_getBlockByNumber", ["finalized", False]))["number"], 16
        )
        indexed, final = await _checkpoint(database_url)
        if indexed == head and final == node_final:
            return head, node_final
        if time.monotonic() > deadline:
            raise AssertionError(f"finalized block not recorded: {final} vs node {node_final}")
        await asyncio.sleep(0.02)


# --- 1. finality=finalized is never taken back ---------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One finalized answer: what was asked, as of which finalized block, and what came back."""

    path: str
    finalized: int
    status: int
    body: Any  # the NFT (200), None (404), or the list of owned NFTs

    async def ask_again(self, client: httpx.AsyncClient, finalized_now: int) -> tuple[int, Any]:
        """The same finalized question after the reorg: `at_block` = the finalized block it
        was answered at, or `finality=finalized` when the finalized block did not move."""
        query: dict[str, Any] = (
            {"finality": "finalized"}
            if finalized_now == self.finalized
            else {"at_block": self.finalized}
        )
        if self.path.startswith("/owners/"):
            return 200, await _walk(client, self.path, 200, **query)
        response = await client.get(self.path, params=query)
        return response.status_code, response.json() if response.status_code == 200 else None


async def _finalized_answers(
    client: httpx.AsyncClient,
    driver: ChainDriver,
    signers: list[Signer],
    finalized: int,
) -> list[Answer]:
    """`?finality=finalized` of /nfts/{c}/{id} for every known token and of
    /owners/{a}/nfts for every dev signer, all answered as of `finalized`."""
    status = (await client.get("/status")).json()
    assert status["finalized_block"] == finalized

    async def nft(contract: str, token_id: int) -> Answer:
        path = f"/nfts/{contract}/{token_id}"
        response = await client.get(path, params={"finality": "finalized"})
        assert response.status_code in (200, 404), response.text
        body = response.json() if response.status_code == 200 else None
        return Answer(path, finalized, response.status_code, body)

    async def owned(signer: Signer) -> Answer:
        path = f"/owners/{signer.address}/nfts"
        return Answer(path, finalized, 200, await _walk(client, path, 200, finality="finalized"))

    answers = await asyncio.gather(
        *(nft(c, t) for c, t in sorted(driver.owners)), *(owned(s) for s in signers)
    )
    status = (await client.get("/status")).json()
    assert status["finalized_block"] == finalized, "the finalized block moved while reading"

    # Every fact is finalized and at or below the finalized block; the two routes agree.
    by_token: dict[tuple[str, str], str] = {}
    by_owner: dict[tuple[str, str], str] = {}
    for answer in answers:
        items = answer.body if isinstance(answer.body, list) else [answer.body]
        for item in items:
            if item is None:
                continue
            assert item["finality"] == "finalized", (answer.path, item)
            assert item["block_number"] <= finalized, (answer.path, item)
            target = by_owner if isinstance(answer.body, list) else by_token
            target[(item["contract"], item["token_id"])] = item["owner"]
            if isinstance(answer.body, list):
                assert item["owner"] == answer.path.split("/")[2]
    assert by_owner == by_token
    return list(answers)


def _facts(answers: list[Answer]) -> set[tuple[int, str]]:
    """(block_number, block_hash): the provenance of every NFT the answers report."""
    found = set()
    for answer in answers:
        items = answer.body if isinstance(answer.body, list) else [answer.body]
        for item in items:
            if item is not None:
                found.add((item["block_number"], item["block_hash"]))
    return found


async def _check_unchanged(
    client: httpx.AsyncClient, rpc: RpcClient, answers: list[Answer], finalized_now: int
) -> None:
    """Asked again now, every answer is the same; every fact is on a canonical block; every
    owner equals `ownerOf` at the block the answer was given as of."""
    again = await asyncio.gather(*(a.ask_again(client, finalized_now) for a in answers))
    for answer, (status, body) in zip(answers, again, strict=True):
        assert (status, body) == (answer.status, answer.body), (
            f"{answer.path} as of finalized block {answer.finalized} changed after a reorg"
        )
    facts = sorted(_facts(answers))
    canonical = await _hashes(rpc, sorted({n for n, _ in facts}))
    taken_back = [(n, h) for n, h in facts if canonical[n] != h]
    assert not taken_back, f"finalized facts on blocks a reorg replaced: {taken_back}"
    by_block: dict[int, dict[tuple[str, int], str]] = {}
    for answer in answers:
        if answer.status == 200 and not isinstance(answer.body, list):
            key = (answer.body["contract"], int(answer.body["token_id"]))
            by_block.setdefault(answer.finalized, {})[key] = answer.body["owner"].lower()
    for block, owners in by_block.items():
        assert await _owners_at(rpc, sorted(owners), block) == owners


async def test_finalized_answers_are_never_taken_back_by_reorgs_above_the_finalized_block(
    anvil: Anvil, rpc: RpcClient, dev_signers: list[Signer], database_url: str, api_url: str
) -> None:
    rng = random.Random(SEED)
    driver = ChainDriver(rpc, dev_signers, rng)
    (album,) = await driver.deploy(1)
    await driver.random_activity(16)
    await rpc.call("anvil_mine", ["0x50"])  # finalized = head - 64: the activity is final
    settings = indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album, POLL_INTERVAL="0.02")
    history: list[Answer] = []
    finalized_tokens = 0
    async with (
        live_indexer(database_url, settings) as task,
        httpx.AsyncClient(base_url=api_url, timeout=30) as client,
    ):
        head, _ = await _settle(database_url, rpc, task)
        for round_ in range(ROUNDS):
            fork = head
            snapshot = await rpc.call("evm_snapshot")
            saved = driver.snapshot()
            depth = rng.randint(1, 10)
            await driver.random_activity(depth)  # automine: one block per transaction
            head, finalized = await _settle(database_url, rpc, task)
            assert head == fork + depth
            assert finalized < fork, "the reorg must stay above the finalized block"
            answers = await _finalized_answers(client, driver, dev_signers, finalized)
            finalized_tokens = max(
                finalized_tokens, sum(1 for a in answers if a.path.startswith("/nfts/") and a.body)
            )
            orphaned = await _hashes(rpc, list(range(fork + 1, head + 1)))

            assert await rpc.call("evm_revert", [snapshot]) is True
            driver.restore(saved)
            await driver.mint()  # a new mint (fresh album id): the fork's first block differs
            await driver.random_activity(depth - 1)
            await rpc.call("anvil_mine", ["0x1"])  # the new branch is one block longer
            head, finalized_now = await _settle(database_url, rpc, task)
            assert head == fork + depth + 1
            canonical = await _hashes(rpc, sorted(orphaned))
            assert canonical[fork + 1] != orphaned[fork + 1], f"round {round_}: no reorg"

            await _check_unchanged(client, rpc, answers, finalized_now)
            history += answers
        # Every answer of every round, asked once more at the end.
        await _check_unchanged(client, rpc, history, finalized_now)
    assert finalized_tokens >= 8, "too few finalized tokens for a meaningful check"
    assert len({a.finalized for a in history}) == ROUNDS  # the finalized block moved each round


# --- 2. pagination under concurrent indexing -----------------------------------------------


async def _wait_indexed_above(database_url: str, block: int, timeout: float = 10.0) -> None:
    """Wait (bounded) until the indexer committed a block above `block`."""
    deadline = time.monotonic() + timeout
    while (await _checkpoint(database_url))[0] <= block:
        if time.monotonic() > deadline:
            raise AssertionError(f"the indexer did not move past block {block}")
        await asyncio.sleep(0.01)


async def _walk_while_indexing(
    client: httpx.AsyncClient, database_url: str, path: str, limit: int
) -> tuple[list[dict[str, Any]], list[int]]:
    """Walk a list page by page; before each next page, the indexer commits new blocks."""
    items: list[dict[str, Any]] = []
    seen: list[int] = []
    cursor = None
    for _ in range(1000):
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        response = await client.get(path, params=params)
        assert response.status_code == 200, (path, params, response.text)
        seen.append(int(response.headers["x-indexed-block"]))
        body = response.json()
        assert len(body["items"]) <= limit
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items, seen
        await _wait_indexed_above(database_url, seen[-1])
    raise AssertionError(f"{path}: pagination never ended")


@contextlib.asynccontextmanager
async def _writer(
    driver: ChainDriver, holder: Signer, busy: tuple[str, int], others: list[Signer]
) -> AsyncIterator[Counter[str]]:
    """A background task sending a mint or transfer every ~20 ms: mints to anyone (the holder
    too), transfers of `busy` among `others`, and other transfers to anyone (the holder too)
    of tokens the holder does not have: the holder only ever receives."""
    sent: Counter[str] = Counter()
    stop = asyncio.Event()
    rng = driver.rng

    async def run() -> None:
        while not stop.is_set():
            draw = rng.random()
            if draw < 0.35:
                await driver.mint(rng.choice(driver.contracts), rng.choice(driver.signers))
                sent["mint"] += 1
            elif draw < 0.65:
                current = driver.owners[busy]
                await driver.transfer(
                    busy, to=rng.choice([s for s in others if s.address.lower() != current])
                )
                sent["busy"] += 1
            else:
                movable = sorted(
                    k for k, o in driver.owners.items() if o != holder.address.lower() and k != busy
                )
                await driver.transfer(rng.choice(movable), to=rng.choice(driver.signers))
                sent["transfer"] += 1
            await asyncio.sleep(0.02)

    task = asyncio.create_task(run())
    try:
        yield sent
    finally:
        stop.set()
        await task  # raises what stopped the writer


def _once(keys: list[Any], what: str) -> None:
    repeated = [k for k, n in Counter(keys).items() if n > 1]
    assert not repeated, f"{what}: items repeated across pages: {repeated}"


async def test_pagination_never_repeats_or_skips_a_starting_item_while_the_indexer_writes(
    anvil: Anvil, rpc: RpcClient, dev_signers: list[Signer], database_url: str, api_url: str
) -> None:
    rng = random.Random(SEED + 1)
    holder, others = dev_signers[-1], dev_signers[:-1]
    driver = ChainDriver(rpc, dev_signers, rng)
    album, extra = await driver.deploy(2)
    for i in range(40):  # 14 tokens to the holder, over both contracts
        to = holder if i % 3 == 0 else rng.choice(others)
        await driver.mint(driver.contracts[i % 2], to)
    busy = next(k for k, o in sorted(driver.owners.items()) if o != holder.address.lower())
    for i in range(60):  # 12 transfers of `busy`; nothing moves away from the holder
        key = busy
        if i % 5:
            key = rng.choice(
                sorted(k for k, o in driver.owners.items() if o in _lower(others) and k != busy)
            )
        current = driver.owners[key]
        await driver.transfer(
            key, to=rng.choice([s for s in others if s.address.lower() != current])
        )
    settings = indexer_settings(
        anvil.rpc_url, ALBUM_CONTRACT=album, EXTRA_CONTRACTS=extra, POLL_INTERVAL="0.02"
    )
    async with (
        live_indexer(database_url, settings) as task,
        httpx.AsyncClient(base_url=api_url, timeout=30) as client,
    ):
        start = await wait_synced(database_url, rpc, task=task)
        conn = await asyncpg.connect(database_url)
        try:
            all_transfers = {
                (r["block_number"], r["log_index"])
                for r in await conn.fetch(
                    "SELECT block_number, log_index FROM transfers WHERE block_number <= $1",
                    start,
                )
            }
            held = {
                ("0x" + bytes(r["contract"]).hex(), str(r["token_id"]))
                for r in await conn.fetch(
                    "SELECT contract, token_id FROM nfts WHERE owner = $1",
                    bytes.fromhex(holder.address[2:]),
                )
            }
            busy_history = {
                (r["block_number"], r["log_index"])
                for r in await conn.fetch(
                    "SELECT block_number, log_index FROM transfers WHERE contract = $1"
                    " AND token_id = $2::numeric",
                    bytes.fromhex(busy[0][2:]),
                    str(busy[1]),
                )
            }
        finally:
            await conn.close()
        assert len(all_transfers) == 100
        assert len(held) == 14
        assert len(busy_history) == 13

        async with _writer(driver, holder, busy, others) as sent:
            transfers, seen_t = await _walk_while_indexing(
                client, database_url, "/transfers", limit=5
            )
            owned, seen_o = await _walk_while_indexing(
                client, database_url, f"/owners/{holder.address}/nfts", limit=3
            )
            history, seen_h = await _walk_while_indexing(
                client, database_url, f"/nfts/{busy[0]}/{busy[1]}/transfers", limit=2
            )
        await wait_synced(database_url, rpc, task=task)

    # The indexer committed between every two pages of every walk.
    for seen in (seen_t, seen_o, seen_h):
        assert seen == sorted(seen), seen
        assert len(set(seen)) == len(seen) > 2, seen
    assert min(sent["mint"], sent["busy"], sent["transfer"]) > 0, sent

    keys = [(t["block_number"], t["log_index"]) for t in transfers]
    _once(keys, "/transfers")
    assert keys == sorted(keys, reverse=True)
    assert {k for k in keys if k[0] <= start} == all_transfers

    tokens = [(i["contract"].lower(), i["token_id"]) for i in owned]
    _once(tokens, "/owners/{a}/nfts")
    assert set(tokens) >= held, f"skipped: {held - set(tokens)}"
    assert all(i["owner"] == holder.address for i in owned)
    order = [(bytes.fromhex(c[2:]), int(t)) for c, t in tokens]
    assert order == sorted(order)

    moves = [(t["block_number"], t["log_index"]) for t in history]
    _once(moves, "/nfts/{c}/{id}/transfers")
    assert moves == sorted(moves, reverse=True)
    assert set(moves) >= busy_history, f"skipped: {busy_history - set(moves)}"
    assert all(t["token_id"] == str(busy[1]) for t in history)


async def test_holders_walk_never_skips_a_holder_whose_count_grows_between_pages(
    anvil: Anvil, rpc: RpcClient, dev_signers: list[Signer], database_url: str, api_client: Any
) -> None:
    driver = ChainDriver(rpc, dev_signers, random.Random(SEED + 3))
    (album,) = await driver.deploy(1)
    a, b, c, d = dev_signers[1:5]
    for signer, count in ((a, 5), (b, 4), (c, 3), (d, 2)):
        for _ in range(count):
            await driver.mint(album, signer)
    settings = indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album)
    await index_to_head(database_url, settings)
    path = f"/contracts/{album}/holders"
    first = (await api_client.get(path, params={"limit": 1})).json()
    assert [h["owner"] for h in first["items"]] == [a.address]

    for _ in range(4):  # the indexer commits between pages: d holds 2 -> 6 tokens
        await driver.mint(album, d)
    await index_to_head(database_url, settings)
    rest = await _walk(api_client, path, 1, cursor=first["next_cursor"])

    walked = [a.address] + [h["owner"] for h in rest]
    _once(walked, "/contracts/{c}/holders")
    missing = {a.address, b.address, c.address, d.address} - set(walked)
    assert not missing, f"holders that existed at the start were skipped: {missing}"


def _lower(signers: list[Signer]) -> set[str]:
    return {s.address.lower() for s in signers}


# --- 3. at_block against ownerOf at that block on the node ---------------------------------


async def test_owner_nfts_at_block_equal_owner_of_at_that_block_on_the_node(
    anvil: Anvil, rpc: RpcClient, dev_signers: list[Signer], database_url: str, api_client: Any
) -> None:
    rng = random.Random(SEED + 2)
    driver = ChainDriver(rpc, dev_signers, rng)
    (album,) = await driver.deploy(1)
    first = await _head(rpc) + 1
    for _ in range(12):
        await driver.mint(album)
    await driver.random_activity(48)
    head = await index_to_head(database_url, indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album))
    assert head == await _head(rpc)

    # Mint block of every token, from the node's Transfer logs from the zero address.
    mints = await rpc.call(
        "eth_getLogs",
        [
            {
                "address": album,
                "fromBlock": "0x0",
                "toBlock": "latest",
                "topics": [TRANSFER_TOPIC, ZERO_TOPIC],
            }
        ],
    )
    minted_at = {int(lg["topics"][3], 16): int(lg["blockNumber"], 16) for lg in mints}
    assert len(minted_at) == len(driver.owners)

    blocks = sorted(rng.sample(range(first - 1, head + 1), 10))
    for block in blocks:
        existing = sorted((album, t) for t, b in minted_at.items() if b <= block)
        on_chain = await _owners_at(rpc, existing, block) if existing else {}
        hashes = await _hashes(rpc, list(range(first - 1, block + 1)))
        answered: set[int] = set()
        for signer in dev_signers:
            items = await _walk(api_client, f"/owners/{signer.address}/nfts", 4, at_block=block)
            ids = [int(i["token_id"]) for i in items]
            assert len(ids) == len(set(ids)), f"block {block}: repeated tokens"
            expected = {t for (_, t), o in on_chain.items() if o == signer.address.lower()}
            assert set(ids) == expected, f"block {block}, owner {signer.address}"
            for item in items:
                assert item["owner"] == signer.address
                assert item["block_number"] <= block
                assert item["block_hash"] == hashes[item["block_number"]]
            answered |= set(ids)
        assert answered == {t for _, t in existing}
