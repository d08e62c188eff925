"""Scale-out drill: the service as operators run it, over one Postgres and one Redis.

Two `discograph index` processes (one active through the lease, one hot standby), two
`discograph api` processes and one `discograph minter`. While the chain moves (mints and
transfers) and clients create albums and queue mints through both APIs, the active indexer is
SIGKILLed. The standby must take over within 10 s; every read answered by either API meanwhile
must equal `ownerOf` on the node at the block the answer claims (`X-Indexed-Block`), with no
5xx; at the end the projection equals a fresh index of the same chain, every mint request is
finalized and the minter's nonces have no gap.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from chain.rpc import RpcClient, to_int
from chain.signer import Signer
from discograph.localchain import Anvil
from tests.indexing import ChainDriver, index_to_head, indexer_settings, projection
from tests.minting import MINTER_KEY, grant_minter_key, mine_until_final
from tests.stack import CliProcess, api_process, cli_env
from tests.test_api_consistency import _owners_at
from tests.test_api_writes import ADMIN

SEED = 20261204
TAKEOVER_LIMIT = 10.0
LOAD_BEFORE_KILL = 4.0
LOAD_AFTER_TAKEOVER = 4.0
STANDBY = "hot standby"
TOOK_OVER = "took over as the active indexer"


async def _checkpoint(conn: asyncpg.Connection) -> int:
    value = await conn.fetchval("SELECT block_number FROM checkpoints")
    return -1 if value is None else int(value)


async def _until(check: Any, timeout: float, what: str) -> float:
    """Poll `check()` (async) until true; the seconds it took."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


class Load:
    """The chain moving, clients writing through both APIs and reading from both, until
    `stop` is set; what every read answered is kept to be checked against the node."""

    def __init__(self, driver: ChainDriver, apis: list[httpx.AsyncClient], tokens: list[Any]):
        self.driver = driver
        self.apis = apis
        self.tokens = tokens  # (contract, token_id) minted before the drill: always 200
        self.stop = asyncio.Event()
        # (contract, token), X-Indexed-Block, owner, the NFT's provenance block
        self.reads: list[tuple[tuple[str, int], int, str, int]] = []
        self.statuses: Counter[int] = Counter()
        self.mint_ids: list[str] = []

    async def chain(self) -> None:
        while not self.stop.is_set():
            await self.driver.random_activity(1)
            await asyncio.sleep(0.1)

    async def writes(self, artist_id: str) -> None:
        for number in itertools.count():
            if self.stop.is_set():
                return
            api = self.apis[number % len(self.apis)]
            body = {
                "title": f"Drill album {number}",
                "tracks": [{"title": "One"}],
                "artist_id": artist_id,
                "to": self.driver.signers[2].address,
            }
            answer = await api.post("/albums/mint", json=body, headers=ADMIN)
            self.statuses[answer.status_code] += 1
            if answer.status_code == 202:
                self.mint_ids.append(answer.json()["mint_id"])
            await asyncio.sleep(0.25)

    async def reads_from(self, api: httpx.AsyncClient, rng: random.Random) -> None:
        while not self.stop.is_set():
            contract, token_id = rng.choice(self.tokens)
            answer = await api.get(f"/nfts/{contract}/{token_id}")
            self.statuses[answer.status_code] += 1
            if answer.status_code == 200:
                block = int(answer.headers["x-indexed-block"])
                nft = answer.json()
                key = (contract, token_id)
                self.reads.append((key, block, nft["owner"].lower(), nft["block_number"]))
            await asyncio.sleep(0.01)


async def test_two_indexers_two_apis_one_minter_survive_killing_the_active_indexer(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    database_url: str,
    second_database_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    # The chain driver never signs with the minter's key (its nonces are the minter's own).
    others = [s for s in dev_signers if s.address != _minter_address()]
    driver = ChainDriver(rpc, others, random.Random(SEED))
    (album,) = await driver.deploy(1)
    await grant_minter_key(rpc, dev_signers[0], album)
    await driver.random_activity(12)
    tokens = sorted(driver.owners)
    chain = dict(RPC_URL=anvil.rpc_url, ALBUM_CONTRACT=album, POLL_INTERVAL="0.05")
    indexer_env = cli_env(DATABASE_URL=database_url, CONFIRMATIONS="0", LOG_LEVEL="INFO", **chain)
    minter_env = cli_env(
        DATABASE_URL=database_url,
        MINTER_PRIVATE_KEY=MINTER_KEY,
        CONFIRMATIONS="1",
        LOG_LEVEL="INFO",
        **chain,
    )
    indexers = [CliProcess(f"indexer-{n}", "index", indexer_env, tmp_path) for n in (1, 2)]
    minter = CliProcess("minter", "minter", minter_env, tmp_path)
    processes = [*indexers, minter]
    try:
        with (
            api_process(database_url, redis_url, tmp_path, **chain) as (first_url, _),
            api_process(database_url, redis_url, tmp_path, **chain) as (second_url, _),
        ):
            async with (
                httpx.AsyncClient(base_url=first_url, timeout=30) as first,
                httpx.AsyncClient(base_url=second_url, timeout=30) as second,
            ):
                report = await _drill(rpc, database_url, driver, [first, second], tokens, indexers)
            for process in processes:
                assert "Traceback" not in process.output(), process.output()[-3000:]
    finally:
        for process in processes:
            process.kill()

    await index_to_head(second_database_url, indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album))
    assert await projection(database_url) == await projection(second_database_url)
    print(f"scale-out drill: {report}; {time.monotonic() - started:.1f} s in all")


async def _drill(
    rpc: RpcClient,
    database_url: str,
    driver: ChainDriver,
    apis: list[httpx.AsyncClient],
    tokens: list[tuple[str, int]],
    indexers: list[CliProcess],
) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        head = to_int(await rpc.call("eth_blockNumber"))
        await _until(lambda: _at_least(conn, head), 30, "the active indexer to reach the head")
        await _until(_standby_found(indexers), 20, "one indexer in standby")
        (standby,) = [i for i in indexers if STANDBY in i.output()]
        (active,) = [i for i in indexers if i is not standby]

        artist = await apis[0].post("/artists", json={"name": "Drill"}, headers=ADMIN)
        assert artist.status_code == 201, artist.text
        load = Load(driver, apis, tokens)
        workers = [
            asyncio.create_task(load.chain()),
            asyncio.create_task(load.writes(artist.json()["id"])),
            *(
                asyncio.create_task(load.reads_from(api, random.Random(SEED + n)))
                for n, api in enumerate(apis)
            ),
        ]
        try:
            await asyncio.sleep(LOAD_BEFORE_KILL)
            active.kill()
            head_at_kill = to_int(await rpc.call("eth_blockNumber"))
            took_over = await _until(
                lambda: _logged(standby, TOOK_OVER), TAKEOVER_LIMIT, "the standby to take over"
            )
            caught_up = await _until(
                lambda: _at_least(conn, head_at_kill), TAKEOVER_LIMIT, "the standby to catch up"
            )
            await asyncio.sleep(LOAD_AFTER_TAKEOVER)
        finally:
            load.stop.set()
            await asyncio.gather(*workers)

        # Every read, from either API, before, during and after the kill: the node's owner at
        # the block the answer claims (X-Indexed-Block). The claim is read before the row, so
        # an indexer commit in between makes the row newer than the claim: then the owner must
        # be the node's at the row's own provenance block (never older than the claim).
        by_block: dict[int, set[tuple[str, int]]] = {}
        for key, block, _, provenance in load.reads:
            by_block.setdefault(max(block, provenance), set()).add(key)
        truth = {
            block: await _owners_at(rpc, sorted(keys), block) for block, keys in by_block.items()
        }
        wrong = [r for r in load.reads if truth[max(r[1], r[3])][r[0]] != r[2]]
        assert not wrong, f"reads disagreeing with the chain at their X-Indexed-Block: {wrong[:5]}"
        newer = sum(1 for r in load.reads if r[3] > r[1])
        server_errors = {s: n for s, n in load.statuses.items() if s >= 500}
        assert not server_errors, f"5xx answers during the drill: {server_errors}"
        assert load.statuses[202] == len(load.mint_ids) > 0

        # Every queued mint ends finalized, once, with the minter's nonces gapless.
        await mine_until_final(rpc)
        ids = load.mint_ids
        await _until(lambda: _all_finalized(conn, ids), 60, "every mint request finalized")
        nonces = sorted(
            r["nonce"]
            for r in await conn.fetch(
                "SELECT nonce FROM mint_requests WHERE nonce IS NOT NULL AND signer IS NOT NULL"
            )
        )
        sent = to_int(await rpc.call("eth_getTransactionCount", [_minter_address(), "latest"]))
        assert nonces == list(range(sent)), f"minter nonces {nonces} vs {sent} sent"
        head = to_int(await rpc.call("eth_blockNumber"))
        await _until(lambda: _at_least(conn, head), 30, "the indexer to reach the final head")
    finally:
        await conn.close()
    return (
        f"standby took over {took_over:.1f} s after SIGKILL and caught up in"
        f" {caught_up:.1f} s more; {len(load.reads)} reads checked against ownerOf"
        f" ({newer} read a row newer than their X-Indexed-Block),"
        f" {len(ids)} mints finalized, answers {dict(sorted(load.statuses.items()))}"
    )


def _minter_address() -> str:
    return Signer(MINTER_KEY).address


async def _at_least(conn: asyncpg.Connection, block: int) -> bool:
    return await _checkpoint(conn) >= block


def _standby_found(indexers: list[CliProcess]) -> Any:
    async def check() -> bool:
        return any(STANDBY in i.output() for i in indexers)

    return check


async def _logged(process: CliProcess, text: str) -> bool:
    return text in process.output()


async def _all_finalized(conn: asyncpg.Connection, mint_ids: list[str]) -> bool:
    rows = await conn.fetch("SELECT status FROM mint_requests WHERE id = ANY($1::uuid[])", mint_ids)
    statuses = Counter(r["status"] for r in rows)
    assert not statuses.get("failed"), f"failed mints: {statuses}"
    return statuses.get("finalized", 0) == len(mint_ids)
