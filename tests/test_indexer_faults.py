"""The indexer against a misbehaving node: every fault is retried or refused, never committed.

The indexer talks to anvil through `FaultyRpcServer`; each scenario ends with the projection
equal to a fresh index of the same chain made without faults.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections import Counter
from typing import Any

import asyncpg
from aiohttp import web
from prometheus_client import REGISTRY

from chain.rpc import RpcClient
from chain.signer import Signer
from discograph.localchain import Anvil
from tests.faults import (
    Fault,
    FaultyRpcServer,
    cut_connection,
    empty_result,
    http_status,
    map_result,
    rpc_error,
    slow,
    truncated_body,
)
from tests.indexing import (
    ChainDriver,
    index_to_head,
    indexer_settings,
    live_indexer,
    projection,
    wait_synced,
)

SEED = 20261126
FORKED_HASH = "0x" + "ee" * 32


async def activity(rpc: RpcClient, signers: list[Signer], seed: int) -> tuple[ChainDriver, str]:
    """~40 mints and transfers: part below anvil's finalized tag (backfill), part above (tip)."""
    driver = ChainDriver(rpc, signers, random.Random(seed))
    (album,) = await driver.deploy(1)
    await driver.random_activity(25)
    await rpc.call("anvil_mine", ["0x50"])
    await driver.random_activity(15)
    return driver, album


async def assert_equals_a_fresh_index(
    anvil: Anvil, album: str, database_url: str, second_database_url: str
) -> None:
    await index_to_head(second_database_url, indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album))
    faulty, fresh = await projection(database_url), await projection(second_database_url)
    assert len(fresh["transfers"]) >= 30
    assert faulty == fresh


async def _fetch(database_url: str, query: str) -> Any:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


def _log_ranges(server: FaultyRpcServer) -> list[tuple[int, int]]:
    """(fromBlock, toBlock) of every eth_getLogs range call the proxy received, in order."""
    ranges = []
    for body in server.requests:
        payload = json.loads(body)
        for call in payload if isinstance(payload, list) else [payload]:
            if call.get("method") == "eth_getLogs" and "fromBlock" in call["params"][0]:
                query = call["params"][0]
                ranges.append((int(query["fromBlock"], 16), int(query["toBlock"], 16)))
    return ranges


def _fork_each_log(logs: Any) -> Any:
    return [{**log, "blockHash": FORKED_HASH} for log in logs]


# --- transport faults ----------------------------------------------------------------------------


def request_chaos(server: FaultyRpcServer, rate: float, faults: list[Fault], seed: int) -> None:
    """A seeded fault for `rate` of the HTTP requests, whatever they hold (one call or a batch).

    `chaos()` draws per JSON-RPC call, so a batch of 33 calls almost always fails as a whole;
    nodes and load balancers fail HTTP requests, which this models.
    """
    rng = random.Random(seed)

    async def respond(
        server: FaultyRpcServer, request: web.Request, body: bytes
    ) -> web.StreamResponse:
        return await server.pass_through(body)

    healthy = Fault("healthy", respond)
    server.inject(*[rng.choice(faults) if rng.random() < rate else healthy for _ in range(3000)])


TRANSPORT_FAULTS = [
    http_status(429, "slow down", retry_after=0.05),
    http_status(500),
    http_status(503),
    truncated_body(),
    cut_connection(),
]


async def test_one_request_in_five_failing_at_random_still_indexes_everything(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    database_url: str,
    second_database_url: str,
) -> None:
    driver, album = await activity(rpc, dev_signers, SEED)
    async with FaultyRpcServer(upstream=anvil.rpc_url) as server:
        request_chaos(server, 0.2, TRANSPORT_FAULTS, seed=SEED)
        settings = indexer_settings(server.url, ALBUM_CONTRACT=album)
        # Backfill and catch-up, then the same node while new blocks arrive.
        await asyncio.wait_for(index_to_head(database_url, settings), 60)
        async with live_indexer(database_url, settings) as task:
            for _ in range(5):
                await driver.random_activity(2)
                await wait_synced(database_url, rpc, task=task, timeout=60)
    kinds = Counter(name for _, name in server.applied)
    assert {"http_429", "http_500", "truncated_body"} <= set(kinds), kinds
    assert kinds.total() - kinds["healthy"] >= 5, kinds
    await assert_equals_a_fresh_index(anvil, album, database_url, second_database_url)


async def test_random_faults_on_every_call_while_following_the_tip_are_retried(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    database_url: str,
    second_database_url: str,
) -> None:
    driver, album = await activity(rpc, dev_signers, SEED + 10)
    async with FaultyRpcServer(upstream=anvil.rpc_url) as server:
        settings = indexer_settings(server.url, ALBUM_CONTRACT=album)
        async with live_indexer(database_url, settings) as task:
            await wait_synced(database_url, rpc, task=task)
            server.chaos(0.2, TRANSPORT_FAULTS, seed=SEED)
            for _ in range(6):
                await driver.random_activity(2)
                await wait_synced(database_url, rpc, task=task, timeout=60)
            server.calm()
    assert len(server.applied) >= 5
    await assert_equals_a_fresh_index(anvil, album, database_url, second_database_url)


async def test_answers_slower_than_the_client_timeout_are_retried(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    database_url: str,
    second_database_url: str,
) -> None:
    _, album = await activity(rpc, dev_signers, SEED + 1)
    async with FaultyRpcServer(upstream=anvil.rpc_url) as server:
        request_chaos(server, 0.15, [slow(1.5)], seed=SEED)
        settings = indexer_settings(server.url, ALBUM_CONTRACT=album, RPC_TIMEOUT="0.3")
        await asyncio.wait_for(index_to_head(database_url, settings), 60)
    assert any(name.startswith("slow") for _, name in server.applied)
    await assert_equals_a_fresh_index(anvil, album, database_url, second_database_url)


# --- eth_getLogs answers -------------------------------------------------------------------------


async def test_too_many_results_halves_the_range_and_still_indexes_everything(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    database_url: str,
    second_database_url: str,
) -> None:
    _, album = await activity(rpc, dev_signers, SEED + 2)
    await rpc.call("anvil_mine", ["0xa0"])  # a backfill of ~200 blocks
    refusals = 3
    async with FaultyRpcServer(upstream=anvil.rpc_url) as server:
        server.inject_for(
            "eth_getLogs",
            *[rpc_error(-32005, "query returned more than 10000 results")] * refusals,
        )
        settings = indexer_settings(server.url, ALBUM_CONTRACT=album)
        await asyncio.wait_for(index_to_head(database_url, settings), 60)
        assert server.pending_faults == 0
    ranges = _log_ranges(server)
    end = max(last for _, last in ranges)  # the safe head the backfill went to
    assert end > 150
    answered = ranges[refusals:]
    # Every refusal is retried from the same block over at most half the blocks (the range
    # size halves; a span already cut to the end of the backfill may stay as it is).
    assert [first for first, _ in ranges[: refusals + 1]] == [0] * (refusals + 1)
    spans = [last - first + 1 for first, last in ranges[: refusals + 1]]
    for before, after in itertools.pairwise(spans):
        assert after <= (before // 2 if before < end + 1 else before)
    assert spans[-1] < spans[0]
    # The answered ranges tile the backfill without gaps or overlaps.
    for (_, last), (first, _) in itertools.pairwise(answered):
        assert first == last + 1
    assert answered[-1][1] == end
    await assert_equals_a_fresh_index(anvil, album, database_url, second_database_url)


async def test_an_empty_log_answer_for_a_tip_block_with_logs_is_asked_again(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    database_url: str,
    second_database_url: str,
) -> None:
    driver, album = await activity(rpc, dev_signers, SEED + 3)
    async with FaultyRpcServer(upstream=anvil.rpc_url) as server:
        settings = indexer_settings(server.url, ALBUM_CONTRACT=album)
        async with live_indexer(database_url, settings) as task:
            await wait_synced(database_url, rpc, task=task)
            for _ in range(3):
                # A node that has not processed the block yet answers [] for its hash, twice.
                server.inject_for("eth_getLogs", empty_result(), empty_result())
                await driver.random_activity(1)
                await wait_synced(database_url, rpc, task=task)
                assert server.pending_faults == 0
    assert [name for _, name in server.applied].count("empty_result") == 6
    await assert_equals_a_fresh_index(anvil, album, database_url, second_database_url)


def _receipt_rescues() -> float:
    value = REGISTRY.get_sample_value(
        "discograph_suspect_answers_total", {"reason": "logs_found_in_receipts"}
    )
    return value or 0.0


async def test_a_node_that_keeps_answering_no_logs_is_overruled_by_the_block_receipts(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    database_url: str,
    second_database_url: str,
) -> None:
    driver, album = await activity(rpc, dev_signers, SEED + 13)
    async with FaultyRpcServer(upstream=anvil.rpc_url) as server:
        settings = indexer_settings(server.url, ALBUM_CONTRACT=album)
        async with live_indexer(database_url, settings) as task:
            await wait_synced(database_url, rpc, task=task)
            # More empty answers than the indexer retries: only the receipts tell the truth.
            before = _receipt_rescues()
            server.inject_for("eth_getLogs", *[empty_result() for _ in range(8)])
            await driver.random_activity(1)
            await wait_synced(database_url, rpc, task=task)
            assert _receipt_rescues() == before + 1
    await assert_equals_a_fresh_index(anvil, album, database_url, second_database_url)


async def test_logs_naming_another_block_hash_at_the_tip_are_never_committed(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    database_url: str,
    second_database_url: str,
) -> None:
    driver, album = await activity(rpc, dev_signers, SEED + 4)
    async with FaultyRpcServer(upstream=anvil.rpc_url) as server:
        settings = indexer_settings(server.url, ALBUM_CONTRACT=album)
        async with live_indexer(database_url, settings) as task:
            await wait_synced(database_url, rpc, task=task)
            for _ in range(3):
                server.inject_for("eth_getLogs", *[map_result(_fork_each_log, "forked")] * 3)
                await driver.random_activity(1)
                await wait_synced(database_url, rpc, task=task)
                assert server.pending_faults == 0
    forked = await _fetch(
        database_url,
        f"SELECT count(*) FROM transfers WHERE block_hash = '\\x{FORKED_HASH[2:]}'::bytea",
    )
    assert forked == 0
    await assert_equals_a_fresh_index(anvil, album, database_url, second_database_url)


async def test_logs_naming_another_block_hash_in_a_backfill_range_are_never_committed(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    database_url: str,
    second_database_url: str,
) -> None:
    _, album = await activity(rpc, dev_signers, SEED + 5)
    async with FaultyRpcServer(upstream=anvil.rpc_url) as server:
        # The first eth_getLogs is the backfill range; its last block (anvil_mine'd) is empty.
        server.inject_for("eth_getLogs", map_result(_fork_each_log, "forked"))
        settings = indexer_settings(server.url, ALBUM_CONTRACT=album)
        await asyncio.wait_for(index_to_head(database_url, settings), 60)
    await assert_equals_a_fresh_index(anvil, album, database_url, second_database_url)


async def test_a_node_error_on_a_backfill_range_is_retried(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    database_url: str,
    second_database_url: str,
) -> None:
    _, album = await activity(rpc, dev_signers, SEED + 6)
    async with FaultyRpcServer(upstream=anvil.rpc_url) as server:
        # What a load-balanced node says when the backend it hit lags behind.
        server.inject_for("eth_getLogs", rpc_error(-32000, "header not found"))
        settings = indexer_settings(server.url, ALBUM_CONTRACT=album)
        await asyncio.wait_for(index_to_head(database_url, settings), 60)
    await assert_equals_a_fresh_index(anvil, album, database_url, second_database_url)


# --- a lagging node ------------------------------------------------------------------------------


async def test_a_node_reporting_a_head_below_the_indexed_tip_is_not_a_reorg(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    database_url: str,
    second_database_url: str,
) -> None:
    driver, album = await activity(rpc, dev_signers, SEED + 7)
    lagging = map_result(lambda head: hex(int(head, 16) - 5), "lagging_head")
    async with FaultyRpcServer(upstream=anvil.rpc_url) as server:
        settings = indexer_settings(server.url, ALBUM_CONTRACT=album)
        async with live_indexer(database_url, settings) as task:
            tip = await wait_synced(database_url, rpc, task=task)
            server.inject_for("eth_blockNumber", *[lagging] * 15)
            lowest = tip
            while server.pending_faults:
                assert not task.done()
                checkpoint = await _fetch(database_url, "SELECT block_number FROM checkpoints")
                lowest = min(lowest, checkpoint)
                await asyncio.sleep(0.02)
            assert lowest == tip  # never rolled back while the node lagged
            await driver.random_activity(2)
            await wait_synced(database_url, rpc, task=task)
    assert [name for _, name in server.applied].count("lagging_head") == 15
    assert await _fetch(database_url, "SELECT count(*) FROM outbox WHERE kind = 'removed'") == 0
    assert await _fetch(database_url, "SELECT last_reorg_at FROM checkpoints") is None
    await assert_equals_a_fresh_index(anvil, album, database_url, second_database_url)


# --- fail-over -----------------------------------------------------------------------------------


async def test_a_first_rpc_url_that_always_fails_fails_over_to_the_second(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    database_url: str,
    second_database_url: str,
) -> None:
    driver, album = await activity(rpc, dev_signers, SEED + 8)
    async with (
        FaultyRpcServer(upstream=anvil.rpc_url) as broken,
        FaultyRpcServer(upstream=anvil.rpc_url) as healthy,
    ):
        broken.chaos(1.0, [http_status(500)], seed=SEED)
        settings = indexer_settings(f"{broken.url},{healthy.url}", ALBUM_CONTRACT=album)
        async with live_indexer(database_url, settings) as task:
            await wait_synced(database_url, rpc, task=task)
            await driver.random_activity(4)
            await wait_synced(database_url, rpc, task=task)
    assert broken.applied  # it was asked, and failed
    assert all(name == "http_500" for _, name in broken.applied)
    assert len(healthy.requests) > len(broken.requests)
    await assert_equals_a_fresh_index(anvil, album, database_url, second_database_url)
