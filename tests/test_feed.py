"""The websocket feed end to end: real anvil, indexer, Postgres, Redis, uvicorn, clients."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest_asyncio

from chain.rpc import RpcClient
from chain.signer import Signer
from tests.conftest import api_env, serve_api
from tests.feeding import Emitter, deploy_bench, feed_client, ws_url
from tests.indexing import indexer_settings, live_indexer, wait_synced


@pytest_asyncio.fixture
async def emitter(rpc: RpcClient, dev_signers: list[Signer]) -> Emitter:
    return Emitter(rpc, dev_signers[0], await deploy_bench(rpc, dev_signers[0]))


@contextlib.contextmanager
def served_api(database_url: str, redis_url: str | None, **extra: str) -> Iterator[str]:
    from api.app import create_app
    from discograph.settings import load_settings

    env = api_env(database_url, **extra)
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    settings = load_settings(env, env_file=None)
    app = create_app(settings, database_url, cache_namespace=f"test:{uuid.uuid4().hex}")
    with serve_api(app) as url:
        yield url


@contextlib.asynccontextmanager
async def indexing(
    database_url: str, rpc: RpcClient, emitter: Emitter
) -> AsyncIterator[asyncio.Task[int]]:
    settings = indexer_settings(rpc.url, EXTRA_CONTRACTS=emitter.contract)
    async with live_indexer(database_url, settings) as task:
        await wait_synced(database_url, rpc, task=task)
        yield task


def chain_order(events: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [(e["block_number"], e["log_index"]) for e in events]


async def test_a_client_connected_before_a_burst_gets_all_1000_transfers_in_chain_order(
    database_url: str, redis_url: str, rpc: RpcClient, emitter: Emitter
) -> None:
    async with indexing(database_url, rpc, emitter) as task:
        with served_api(database_url, redis_url) as api:
            async with feed_client(ws_url(api)) as client:
                await asyncio.wait_for(client.live.wait(), 10)
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
