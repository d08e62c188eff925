"""Drill: Postgres stopped for ~3 s under load (reads, mint requests, chain activity), then
started again in place. The API answers 503 + Retry-After meanwhile and never another 5xx;
afterwards the indexer catches up to a projection equal to a fresh index, and every accepted
mint request is minted exactly once with contiguous nonces."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from api.app import create_app
from chain.album import album_id_to_bytes32
from chain.rpc import RpcClient, to_int
from chain.signer import Signer
from db.engine import create_pool
from discograph.localchain import Anvil
from discograph.settings import load_settings
from tests.chaos.drills import (
    DrillLog,
    ReadLoad,
    api_500_causes,
    own_postgres,
    rate,
    running,
    supervised_indexer,
    supervised_minter,
)
from tests.conftest import api_env, serve_api
from tests.indexing import ChainDriver, index_to_head, indexer_settings, projection, wait_synced
from tests.minting import (
    album_minted_logs,
    all_in,
    grant_minter_key,
    mine_until_final,
    minter_settings,
    wait_until,
)
from tests.test_api_writes import ADMIN, bearer, token

OUTAGE = 3.0
FINAL = ("finalized",)
# The minter is meant to reconnect by itself (docs/operations.md): the drill runs it under a
# supervisor anyway, so that a minter that stops (as it did on asyncpg's InternalClientError,
# "cannot switch to state …; another operation (2) is in progress", on a connection that got
# Postgres's shutdown notice) still lets every other check run; the drill fails at its end.


class MintRequester:
    """A frontend: one `POST /albums/mint` a second, each retried with its Idempotency-Key on
    503 (after Retry-After) or 409 until it is accepted (202)."""

    def __init__(self, base: str, artist: str, wallet: str) -> None:
        self.base = base
        self.auth = bearer(token(artist))
        self.wallet = wallet
        self.accepted: dict[str, str] = {}  # mint id -> album id
        self.retries: dict[int, int] = {}  # status -> answers that were retried
        self.violations: list[str] = []

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession(self.base) as http:
            number = 0
            while not stop.is_set():
                number += 1
                await self.request(http, number)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

    async def request(self, http: aiohttp.ClientSession, number: int) -> None:
        key = f"drill-mint-{uuid.uuid4()}"
        body = {
            "title": f"Drill album {number}",
            "tracks": [{"title": "Intro", "duration_s": 60}],
            "to": self.wallet,
        }
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                async with http.post(
                    "/albums/mint", json=body, headers=self.auth | {"Idempotency-Key": key}
                ) as response:
                    status, answer = response.status, await response.json(content_type=None)
                    retry_after = response.headers.get("Retry-After")
            except aiohttp.ClientError as exc:
                self.violations.append(f"POST /albums/mint: no answer ({exc!r})")
                return
            if status == 202:
                self.accepted[answer["mint_id"]] = answer["album_id"]
                return
            if status in (409, 503) and retry_after is not None:
                self.retries[status] = self.retries.get(status, 0) + 1
                await asyncio.sleep(min(float(retry_after), 1.0))
                continue
            self.violations.append(f"POST /albums/mint: {status} {answer}")
            return
        self.violations.append(f"POST /albums/mint {key}: not accepted within 30 s")


async def chain_activity(driver: ChainDriver, stop: asyncio.Event, counts: list[int]) -> None:
    """A mint or transfer of the driver's own tokens every ~0.3 s (dev key 0 and holders)."""
    while not stop.is_set():
        await driver.random_activity(1)
        counts[0] += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.3)


async def get(http: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
    async with http.get(path) as response:
        return response.status, await response.json(content_type=None)


async def test_postgres_restarted_under_load(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    redis_url: str,
    service_dir: Path,
    drill_log: DrillLog,
) -> None:
    drill = drill_log
    # The driver never sends from dev key 1: that is the minter's key.
    driver = ChainDriver(rpc, [dev_signers[0], *dev_signers[2:]], random.Random(11))
    (album,) = await driver.deploy(1)
    minter_key = await grant_minter_key(rpc, dev_signers[0], album)
    start_nonce = to_int(await rpc.call("eth_getTransactionCount", [minter_key.address, "latest"]))
    await driver.random_activity(6)
    fan = dev_signers[-1].address
    async with own_postgres(service_dir, "drill", "fresh") as pg:
        database_url = pg.url("drill")
        drill.did(f"started an own Postgres on port {pg.port}, migrated 'drill' and 'fresh'")
        settings = indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album)
        api_settings = load_settings(
            api_env(database_url, REDIS_URL=redis_url, RATE_LIMIT_READS="off"), env_file=None
        )
        app = create_app(api_settings, database_url, cache_namespace=f"drill:{uuid.uuid4().hex}")
        async with (
            supervised_indexer(settings, database_url) as (indexer, supervised),
            supervised_minter(minter_settings(anvil.rpc_url, album), database_url) as (
                minter,
                m_sup,
            ),
        ):
            await wait_synced(database_url, rpc, task=indexer)
            with serve_api(app) as api:
                async with (
                    aiohttp.ClientSession(api) as http,
                    http.post(
                        "/artists", json={"name": "Drill", "wallet": fan}, headers=ADMIN
                    ) as response,
                ):
                    assert response.status == 201, await response.text()
                    artist = (await response.json())["id"]
                contract, token_id = sorted(driver.owners)[0]
                owner = driver.owners[(contract, token_id)]
                load = ReadLoad(
                    api,
                    [
                        "/albums?limit=5",
                        f"/nfts/{contract}/{token_id}",
                        f"/owners/{owner}/nfts?limit=5",
                        "/transfers?limit=5",
                    ],
                )
                requester = MintRequester(api, artist, fan)
                activity = [0]
                stop = asyncio.Event()
                background = [
                    asyncio.create_task(requester.run(stop)),
                    asyncio.create_task(chain_activity(driver, stop, activity)),
                ]
                try:
                    with api_500_causes() as errors:
                        async with running(load, workers=3):
                            await asyncio.sleep(3.0)
                            load.phase = "down"
                            began = drill.t
                            await asyncio.to_thread(pg.stop)
                            drill.did(
                                f"stopped Postgres (fast shutdown) under load"
                                f" ({rate(len(load.of('before')), began)} reads,"
                                f" 1 mint request/s, chain activity every 0.3 s)"
                            )
                            await asyncio.sleep(OUTAGE)
                            load.phase = "restarting"
                            await asyncio.to_thread(pg.start)
                            load.phase = "after"
                            drill.did(f"started Postgres again on port {pg.port}, same data dir")
                            await asyncio.sleep(4.0)
                finally:
                    stop.set()
                    await asyncio.gather(*background)
                drill.did(
                    f"stopped the load: {len(load.answers)} reads,"
                    f" {len(requester.accepted)} mints accepted, {activity[0]} chain operations"
                )

                # --- while it was down -------------------------------------------------------
                assert not errors.causes, f"the API answered 500: {errors.causes[:5]}"
                assert not load.violations, load.violations[:10]
                assert not requester.violations, requester.violations
                outage = load.count("down") + load.count("restarting")
                assert outage[503] > 0, f"no 503 while Postgres was down: {outage}"
                assert set(outage) <= {200, 503}, outage
                drill.checked(
                    f"while down: {outage.total()} reads, 503: {outage[503]} (all JSON with"
                    f" Retry-After), 200 (cache hits): {outage[200]}; 500 or other 5xx: 0;"
                    f" POSTs retried after a 503: {requester.retries.get(503, 0)}"
                )

                # --- recovery ------------------------------------------------------------
                async with _pooled(database_url) as pool:
                    await wait_until(
                        all_in(pool, ("confirmed", *FINAL), len(requester.accepted)),
                        "every accepted mint confirmed",
                        task=minter,
                        timeout=30,
                    )
                    await mine_until_final(rpc)
                    await wait_until(
                        all_in(pool, FINAL, len(requester.accepted)),
                        "every accepted mint finalized",
                        task=minter,
                        timeout=30,
                    )
                    rows = await pool.fetch("SELECT id, album_id, nonce FROM mint_requests")
                    mint_txs = await pool.fetchval("SELECT count(*) FROM mint_txs")
                head = await wait_synced(database_url, rpc, task=indexer, timeout=30)
                async with aiohttp.ClientSession(api) as http:
                    for path in load.paths:
                        joiner = "&" if "?" in path else "?"
                        status, body = await get(http, f"{path}{joiner}min_block={head}")
                        assert status == 200, (path, status, body)
                after = load.count("after")
                # The indexer goes back to standby when its lease connection dies, and takes
                # the lease again once Postgres is back: it must not stop.
                assert not supervised.restarts, f"the indexer stopped: {supervised.restarts}"
                drill.checked(
                    f"after restart: API 200 again on every read route (after-restart reads:"
                    f" {dict(after)}); the indexer rode it out without a restart and synced to"
                    f" block {head}"
                )

        # --- exactly once ------------------------------------------------------------------
        accepted = requester.accepted
        assert len(accepted) >= 5, accepted
        assert {str(r["id"]) for r in rows} == set(accepted), "a mint request was duplicated"
        nonces = sorted(int(r["nonce"]) for r in rows)
        assert nonces == list(range(start_nonce, start_nonce + len(accepted))), nonces
        assert mint_txs == len(accepted)
        logs = await album_minted_logs(rpc, album)
        ours = {"0x" + album_id_to_bytes32(uuid.UUID(a)).hex() for a in accepted.values()}
        minted = [entry["topics"][2] for entry in logs if entry["topics"][2] in ours]
        assert sorted(minted) == sorted(ours), "an album minted twice or not at all"
        pending = to_int(await rpc.call("eth_getTransactionCount", [minter_key.address, "pending"]))
        assert pending == start_nonce + len(accepted)
        drill.checked(
            f"{len(accepted)} accepted mint requests all finalized, each album minted once,"
            f" nonces {nonces[0]}..{nonces[-1]} without gap, no request duplicated"
        )

        await index_to_head(pg.url("fresh"), settings)
        live, fresh = await projection(database_url), await projection(pg.url("fresh"))
        assert live == fresh
        drill.checked(
            f"projection equals a fresh index: {len(fresh['transfers'])} transfers,"
            f" {len(fresh['nfts'])} NFTs; 0 lost, 0 duplicated"
        )

    # Last, so that every other check ran.
    assert not m_sup.crashes, (
        f"the minter stopped {len(m_sup.crashes)}x instead of reconnecting by itself"
        f" (restarted by the drill's supervisor): {m_sup.crashes}"
    )
    drill.checked("the minter rode the outage out by itself (no restart)")


@contextlib.asynccontextmanager
async def _pooled(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()
