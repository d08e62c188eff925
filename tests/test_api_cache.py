"""The Redis response cache is never stale after the chain moved, and optional."""

from __future__ import annotations

import os
import random
import uuid

import httpx
import pytest

from api.app import create_app
from chain.rpc import RpcClient
from chain.signer import Signer
from discograph.localchain import Anvil
from discograph.processes import free_port
from discograph.settings import load_settings
from tests.indexing import ChainDriver, indexer_settings, live_indexer, owners_on_chain, wait_synced

ROUNDS = int(os.environ.get("DISCOGRAPH_CACHE_ROUNDS", "200"))


async def test_warm_cache_never_returns_the_old_owner_after_a_transfer(
    anvil: Anvil, rpc: RpcClient, dev_signers: list[Signer], database_url: str, api_url: str
) -> None:
    rng = random.Random(31)
    driver = ChainDriver(rpc, dev_signers, rng)
    (album,) = await driver.deploy(1)
    contract, token_id = await driver.mint()
    settings = indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album, POLL_INTERVAL="0.02")
    hits = 0
    async with (
        live_indexer(database_url, settings) as task,
        httpx.AsyncClient(base_url=api_url, timeout=30) as client,
    ):
        await wait_synced(database_url, rpc, task=task)
        url = f"/nfts/{contract}/{token_id}"
        for round_ in range(ROUNDS):
            await (await client.get(url)).aread()  # warm the cache with the current owner
            await driver.transfer((contract, token_id), to=rng.choice(dev_signers))
            await wait_synced(database_url, rpc, task=task)
            expected = driver.owners[(contract, token_id)]
            for _ in range(2):
                response = await client.get(url)
                assert response.status_code == 200
                owner = response.json()["owner"].lower()
                assert owner == expected, f"round {round_}: stale owner from the cache"
                hits += response.headers.get("x-cache") == "hit"
            owners = await client.get(f"/owners/{expected}/nfts")
            assert token_id in [int(i["token_id"]) for i in owners.json()["items"]]
        metrics = (await client.get("/metrics")).text
    # The second read of each round is served from the cache: the cache is really in use.
    assert hits >= ROUNDS * 0.9
    assert _counter(metrics, 'discograph_cache_lookups_total{result="hit"}') >= hits
    assert _counter(metrics, 'discograph_cache_lookups_total{result="miss"}') >= ROUNDS


def _counter(metrics: str, series: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in /metrics")


async def test_reads_after_a_reorg_show_the_canonical_owner(
    anvil: Anvil, rpc: RpcClient, dev_signers: list[Signer], database_url: str, api_url: str
) -> None:
    rng = random.Random(37)
    driver = ChainDriver(rpc, dev_signers, rng)
    (album,) = await driver.deploy(1)
    contract, token_id = await driver.mint(to=dev_signers[1])
    settings = indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album, POLL_INTERVAL="0.02")
    async with (
        live_indexer(database_url, settings) as task,
        httpx.AsyncClient(base_url=api_url, timeout=30) as client,
    ):
        await wait_synced(database_url, rpc, task=task)
        for _ in range(5):
            snapshot = await rpc.call("evm_snapshot")
            saved = driver.snapshot()
            await driver.transfer((contract, token_id), to=dev_signers[4])
            await wait_synced(database_url, rpc, task=task)
            for _ in range(2):  # cached now
                await client.get(f"/nfts/{contract}/{token_id}")
            await rpc.call("evm_revert", [snapshot])
            driver.restore(saved)
            await driver.transfer((contract, token_id), to=dev_signers[3])
            await rpc.call("anvil_mine", ["0x1"])
            await wait_synced(database_url, rpc, task=task)
            chain_owner = (await owners_on_chain(rpc, contract, [token_id]))[token_id]
            response = await client.get(f"/nfts/{contract}/{token_id}")
            assert response.json()["owner"].lower() == chain_owner
            history = await client.get(f"/nfts/{contract}/{token_id}/transfers")
            assert dev_signers[4].address not in [t["to"] for t in history.json()["items"]]


@pytest.fixture
def dead_redis_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


async def test_with_redis_down_the_api_answers_from_postgres_and_says_degraded(
    anvil: Anvil, rpc: RpcClient, dev_signers: list[Signer], database_url: str, dead_redis_url: str
) -> None:
    from litestar.testing import AsyncTestClient

    from tests.indexing import index_to_head

    driver = ChainDriver(rpc, dev_signers, random.Random(41))
    (album,) = await driver.deploy(1)
    contract, token_id = await driver.mint()
    await index_to_head(database_url, indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album))
    settings = load_settings(
        {"DATABASE_URL": database_url, "REDIS_URL": dead_redis_url}, env_file=None
    )
    app = create_app(settings, database_url, cache_namespace=f"test:{uuid.uuid4().hex}")
    async with AsyncTestClient(app=app) as client:
        for _ in range(2):
            response = await client.get(f"/nfts/{contract}/{token_id}")
            assert response.status_code == 200
            assert response.json()["owner"].lower() == driver.owners[(contract, token_id)]
        ready = await client.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded"
