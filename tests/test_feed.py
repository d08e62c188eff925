"""The websocket feed end to end: real anvil, indexer, Postgres, Redis, uvicorn, clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest_asyncio
from websockets.asyncio.client import connect

from bench.feed import deploy_bench
from chain.rpc import RpcClient
from chain.signer import Signer
from tests.conftest import api_env, serve_api
from tests.feeding import Emitter, FeedClient, feed_client, ws_url
from tests.indexing import indexer_settings, live_indexer, wait_synced


@pytest_asyncio.fixture
async def emitter(rpc: RpcClient, dev_signers: list[Signer]) -> Emitter:
    return Emitter(rpc, dev_signers[0], await deploy_bench(rpc, dev_signers[0]))


@contextlib.contextmanager
def served_api(
    database_url: str, redis_url: str | None, port: int | None = None, **extra: str
) -> Iterator[str]:
    from api.app import create_app
    from discograph.settings import load_settings

    env = api_env(database_url, **extra)
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    settings = load_settings(env, env_file=None)
    app = create_app(settings, database_url, cache_namespace=f"test:{uuid.uuid4().hex}")
    with serve_api(app, port) as url:
        yield url


@contextlib.asynccontextmanager
async def indexing(
    database_url: str, rpc: RpcClient, emitter: Emitter
) -> AsyncIterator[asyncio.Task[int]]:
    settings = indexer_settings(rpc.url, EXTRA_CONTRACTS=emitter.contract)
    async with live_indexer(database_url, settings) as task:
        await wait_synced(database_url, rpc, task=task)
        yield task


@contextlib.asynccontextmanager
async def live_stream(
    database_url: str, redis_url: str, rpc: RpcClient, emitter: Emitter
) -> AsyncIterator[tuple[asyncio.Task[int], FeedClient]]:
    """Indexer, API and one unfiltered client that has gone live."""
    async with indexing(database_url, rpc, emitter) as task:
        with served_api(database_url, redis_url) as api:
            async with feed_client(ws_url(api)) as client:
                await asyncio.wait_for(client.live.wait(), 10)
                yield task, client


def chain_order(events: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [(e["block_number"], e["log_index"]) for e in events]


async def test_a_client_connected_before_a_burst_gets_all_1000_transfers_in_chain_order(
    database_url: str, redis_url: str, rpc: RpcClient, emitter: Emitter
) -> None:
    async with live_stream(database_url, redis_url, rpc, emitter) as (task, client):
        for _ in range(5):
            await emitter.block(mints=200)
        events = await client.wait_events(1000)
        await wait_synced(database_url, rpc, task=task)
    assert len(events) == 1000
    assert {e["type"] for e in events} == {"transfer"}
    assert chain_order(events) == sorted(chain_order(events))
    assert [int(e["cursor"]) for e in events] == sorted(int(e["cursor"]) for e in events)
    assert len({e["cursor"] for e in events}) == 1000
    assert sorted(int(e["token_id"]) for e in events) == list(range(1, 1001))


async def outbox_seqs(database_url: str) -> list[int]:
    conn = await asyncpg.connect(database_url)
    try:
        return [int(r[0]) for r in await conn.fetch("SELECT seq FROM outbox ORDER BY seq")]
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def emitting(emitter: Emitter, seed: int, pause: float = 0.02) -> AsyncIterator[None]:
    """Blocks of 1-30 mints and moves, one after another, until the block ends."""
    rng = random.Random(seed)

    async def run() -> None:
        await emitter.block(mints=10)
        while True:
            await emitter.block(mints=rng.randint(1, 15), moves=rng.randint(0, 15))
            await asyncio.sleep(pause)

    task = asyncio.create_task(run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def read_some(url: str, count: int) -> tuple[list[dict[str, Any]], str | None]:
    """Connect, process `count` messages one by one, then drop the connection: the events
    processed and the last cursor seen (events, live and heartbeats all carry one)."""
    processed: list[dict[str, Any]] = []
    cursor = None
    async with connect(url) as connection:
        while len(processed) < count:
            try:
                frame = await asyncio.wait_for(connection.recv(), 2.0)
            except TimeoutError:
                break
            for line in str(frame).splitlines():
                message = json.loads(line)
                cursor = message["cursor"]
                if message["type"] not in ("live", "heartbeat"):
                    processed.append(message)
                if len(processed) >= count:
                    break
        connection.transport.abort()  # dropped, not closed politely
    return processed, cursor


async def test_a_client_dropped_at_random_points_and_resuming_gets_every_event_exactly_once(
    database_url: str, redis_url: str, rpc: RpcClient, emitter: Emitter
) -> None:
    rng = random.Random(20261204)
    received: list[int] = []
    cursor = "0"
    async with indexing(database_url, rpc, emitter) as task:
        with served_api(database_url, redis_url) as api:
            async with emitting(emitter, seed=1):
                for _ in range(100):
                    events, last = await read_some(ws_url(api, since=cursor), rng.randint(1, 40))
                    received += [int(e["cursor"]) for e in events]
                    cursor = last or cursor
            await wait_synced(database_url, rpc, task=task)
            final = (await outbox_seqs(database_url))[-1]
            while int(cursor) < final:
                events, last = await read_some(ws_url(api, since=cursor), 500)
                received += [int(e["cursor"]) for e in events]
                cursor = last or cursor
    assert len(received) > 500, "the rounds should have seen a lot of the stream"
    assert received == await outbox_seqs(database_url)


async def test_a_reorg_sends_removed_for_each_orphaned_event_then_replacements_then_finalized(
    database_url: str, redis_url: str, rpc: RpcClient, emitter: Emitter
) -> None:
    async with live_stream(database_url, redis_url, rpc, emitter) as (task, client):
        for _ in range(5):
            await emitter.block(mints=10)
        before = await client.wait_events(50)
        head = int(await rpc.call("eth_blockNumber"), 16)
        await rpc.call("anvil_reorg", [3, []])
        await rpc.call("anvil_mine", ["0x1"])  # the indexer sees the fork on a new head
        await wait_synced(database_url, rpc, task=task)
        await client.wait_events(50 + 30)
        emitter.minted -= 30
        for _ in range(2):
            await emitter.block(mints=4)
        await client.wait_events(50 + 30 + 8)
        await rpc.call("anvil_mine", [hex(70)])
        await wait_synced(database_url, rpc, task=task)
        deadline = asyncio.get_running_loop().time() + 20
        while not any(m["type"] == "finalized" for m in client.events):
            assert asyncio.get_running_loop().time() < deadline, "no finalized message"
            await asyncio.sleep(0.05)
        stream = list(client.events)
    orphaned = [e for e in before if e["block_number"] > head - 3]
    assert len(orphaned) == 30
    removed = [m for m in stream if m["type"] == "removed"]
    key = ("tx_hash", "log_index", "block_hash", "token_id", "from", "to")
    assert sorted(tuple(m[k] for k in key) for m in removed) == sorted(
        tuple(m[k] for k in key) for m in orphaned
    )
    assert {m["removed_type"] for m in removed} == {"transfer"}
    position = {m["cursor"]: i for i, m in enumerate(stream)}
    last_removed = max(position[m["cursor"]] for m in removed)
    assert min(position[m["cursor"]] for m in removed) > max(
        position[m["cursor"]] for m in orphaned
    )
    replacements = [
        m for m in stream if m["type"] == "transfer" and position[m["cursor"]] > last_removed
    ]
    assert len(replacements) == 8
    assert {m["block_number"] for m in replacements} == {head + 2, head + 3}
    finalized = [m for m in stream if m["type"] == "finalized"]
    final = finalized[-1]
    assert final["block_number"] >= head
    assert position[final["cursor"]] > max(position[m["cursor"]] for m in replacements)
    canonical = await rpc.call("eth_getBlockByNumber", [hex(final["block_number"]), False])
    assert final["block_hash"] == canonical["hash"]
    assert [f["block_number"] for f in finalized] == sorted({f["block_number"] for f in finalized})
