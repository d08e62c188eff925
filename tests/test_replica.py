"""Reads from a real streaming replica (READ_DATABASE_URL): a hot standby made with
pg_basebackup from the test's own primary, lagging for real while its WAL replay is paused."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import pytest_asyncio

from api.app import create_app
from api.auth import issue_token
from api.freshness import ReplicaIndexedBlock
from chain.rpc import RpcClient
from chain.signer import Signer
from db.engine import ensure_database, migrate, with_database
from discograph.embedded import EmbeddedPostgres, start_postgres, start_standby
from discograph.localchain import Anvil
from discograph.settings import load_settings
from tests.conftest import api_env, serve_api
from tests.indexing import ChainDriver, indexer_settings, live_indexer, projection, wait_synced

DATABASE = "discograph"


@pytest.fixture
def primary(service_dir: Path) -> Iterator[EmbeddedPostgres]:
    """A Postgres of this test's own (not the session's server): the standby copies all of it."""
    server = start_postgres(service_dir / "primary", durable=False)
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture
async def standby(primary: EmbeddedPostgres, service_dir: Path) -> AsyncIterator[EmbeddedPostgres]:
    """The migrated primary's hot standby."""
    await ensure_database(primary.dsn(DATABASE))
    await migrate(primary.dsn(DATABASE))
    server = await asyncio.to_thread(start_standby, primary, service_dir / "standby", durable=False)
    try:
        yield server
    finally:
        server.stop()


async def replica_block(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT block_number FROM checkpoints"))
    finally:
        await conn.close()


async def wait_replayed(dsn: str, block: int, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(TypeError, asyncpg.UndefinedTableError):
                if await replica_block(dsn) >= block:
                    return
            await asyncio.sleep(0.02)


@contextlib.contextmanager
def api(primary_url: str, redis_url: str, replica_url: str | None = None) -> Iterator[str]:
    settings = load_settings(api_env(primary_url, REDIS_URL=redis_url), env_file=None)
    app = create_app(
        settings,
        primary_url,
        read_database_url=replica_url,
        cache_namespace=f"test:{uuid.uuid4().hex}",
    )
    with serve_api(app) as url:
        yield url


def token_for(subject: str) -> str:
    settings = load_settings(api_env("postgresql://unused/db"), env_file=None)
    return issue_token(settings, subject=subject, role="artist")


def indexed(response: httpx.Response) -> int:
    return int(response.headers["x-indexed-block"])


async def test_reads_come_from_the_replica_and_never_claim_a_block_it_has_not_replayed(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    primary: EmbeddedPostgres,
    standby: EmbeddedPostgres,
    redis_url: str,
) -> None:
    primary_url, replica_url = primary.dsn(DATABASE), standby.dsn(DATABASE)
    driver = ChainDriver(rpc, dev_signers, random.Random(41))
    (contract,) = await driver.deploy(1)
    for _ in range(4):
        await driver.mint()
    await driver.transfer()
    settings = indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=contract)
    replica_admin = await asyncpg.connect(with_database(replica_url, "postgres"))
    async with contextlib.AsyncExitStack() as closing:
        closing.push_async_callback(replica_admin.close)
        task = await closing.enter_async_context(live_indexer(primary_url, settings))
        head = await wait_synced(primary_url, rpc, task=task)
        await wait_replayed(replica_url, head)
        with (
            api(primary_url, redis_url, replica_url) as url,
            api(primary_url, redis_url) as primary_api,
        ):
            async with (
                httpx.AsyncClient(base_url=url, timeout=30) as client,
                httpx.AsyncClient(base_url=primary_api, timeout=30) as direct,
            ):
                # (1) The replica holds the primary's projection, and answers as the primary.
                assert await projection(replica_url) == await projection(primary_url)
                (_, token), *_ = sorted(driver.owners)
                owner = driver.owners[(contract, token)]
                reads = [
                    f"/nfts/{contract}/{token}",
                    f"/nfts/{contract}/{token}/transfers",
                    f"/owners/{owner}/nfts",
                    "/transfers",
                    f"/contracts/{contract}/holders",
                    "/albums",
                ]
                for path in reads:
                    ours = await client.get(path, params={"min_block": head})
                    theirs = await direct.get(path, params={"min_block": head})
                    assert ours.status_code == theirs.status_code == 200, (path, ours.text)
                    assert ours.json() == theirs.json(), path
                    assert indexed(ours) == indexed(theirs) == head

                # (2) The replica lags for real: its WAL replay stops.
                await replica_admin.execute("SELECT pg_wal_replay_pause()")
                stale_owner = driver.owners[(contract, token)]
                new_owner = next(s for s in dev_signers if s.address.lower() != stale_owner)
                await driver.transfer((contract, token), to=new_owner)
                _, new_token = await driver.mint(contract, dev_signers[1])
                written = await wait_synced(primary_url, rpc, task=task)
                assert written > head
                assert await replica_block(primary_url) == written
                assert await replica_block(replica_url) == head

                # A plain read says the replica's block, never the primary's.
                before = await client.get(f"/nfts/{contract}/{token}")
                again = await client.get(f"/nfts/{contract}/{token}")
                assert before.status_code == again.status_code == 200
                assert before.json()["owner"].lower() == stale_owner
                assert again.headers.get("x-cache") == "hit"  # the old version is cached
                assert indexed(before) == indexed(again) == head
                missing = await client.get(f"/nfts/{contract}/{new_token}")
                assert missing.status_code == 404
                assert indexed(missing) == head
                ready = await client.get("/health/ready")
                assert ready.status_code == 200  # a little lag does not take it out
                assert ready.headers["x-replica-indexed-block"] == str(head)
                assert ready.headers["x-replica-lag-blocks"] == str(written - head)

                # Read-your-writes: ?min_block waits for the replica, not for the primary.
                waiting = asyncio.create_task(
                    client.get(f"/nfts/{contract}/{new_token}", params={"min_block": written})
                )
                await asyncio.sleep(1.5)
                assert not waiting.done()
                await replica_admin.execute("SELECT pg_wal_replay_resume()")
                answer = await asyncio.wait_for(waiting, 10)
                assert answer.status_code == 200, answer.text
                assert indexed(answer) >= written
                assert answer.json()["owner"] == dev_signers[1].address

                # (3) Caught up: the cached answer of the old version is not served.
                after = await client.get(f"/nfts/{contract}/{token}")
                assert after.status_code == 200
                assert indexed(after) >= written
                assert after.json()["owner"] == new_owner.address

                # Replica down: its reads fail with a retryable 503; what the primary serves
                # (GET /mints/{id}, the writes) keeps working, and the process stays ready.
                await asyncio.to_thread(standby.stop)
                down = await client.get(f"/owners/{new_owner.address}/nfts")
                assert down.status_code == 503, down.text
                assert down.headers["retry-after"] == "1"
                bearer = {"Authorization": f"Bearer {token_for(str(uuid.uuid4()))}"}
                mint = await client.get(f"/mints/{uuid.uuid4()}", headers=bearer)
                assert mint.status_code == 404, mint.text  # answered from the primary
                assert indexed(mint) >= written
                ready = await client.get("/health/ready")
                assert ready.status_code == 200
                assert ready.json()["status"] == "degraded"
                assert "read replica unreachable" in ready.json()["detail"]


async def test_the_replica_tracker_wakes_on_the_primary_and_waits_for_replay(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    primary: EmbeddedPostgres,
    standby: EmbeddedPostgres,
) -> None:
    """The primary's notification wakes a quick look at the replica (the slow poll here is
    far too slow to be what answers), and the tracker reports the replica's block only."""
    primary_url, replica_url = primary.dsn(DATABASE), standby.dsn(DATABASE)
    driver = ChainDriver(rpc, dev_signers, random.Random(43))
    (contract,) = await driver.deploy(1)
    settings = indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=contract)
    tracker = ReplicaIndexedBlock(primary_url, replica_url, poll=30.0)
    replica_admin = await asyncpg.connect(with_database(replica_url, "postgres"))
    async with contextlib.AsyncExitStack() as closing:
        closing.push_async_callback(replica_admin.close)
        task = await closing.enter_async_context(live_indexer(primary_url, settings))
        head = await wait_synced(primary_url, rpc, task=task)
        await wait_replayed(replica_url, head)
        await tracker.start()
        closing.push_async_callback(tracker.stop)
        assert tracker.block == head
        loop = asyncio.get_running_loop()
        for _ in range(3):
            await driver.mint(contract)
            written = await wait_synced(primary_url, rpc, task=task)
            began = loop.time()
            assert await tracker.wait_for(written, 2.0)
            assert loop.time() - began < 0.5
            assert await replica_block(replica_url) >= tracker.block >= written

        await replica_admin.execute("SELECT pg_wal_replay_pause()")
        replayed = await replica_block(replica_url)
        await driver.mint(contract)
        written = await wait_synced(primary_url, rpc, task=task)
        assert not await tracker.wait_for(written, 1.0)  # announced, not replayed
        assert tracker.primary_block == written
        assert tracker.block == replayed
        await replica_admin.execute("SELECT pg_wal_replay_resume()")
        assert await tracker.wait_for(written, 2.0)
