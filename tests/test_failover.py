"""chain.failover.FailoverRpc against real anvils behind fault-injecting proxies.

Also pins the fault injector's own behaviour that the indexer tests rely on: per-method faults
inside batches, chaos mode's reproducibility, and serving from a thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from faults import (
    FaultyRpcServer,
    cut_connection,
    empty_result,
    http_status,
    map_result,
    rpc_error,
    slow,
    truncated_body,
)
from prometheus_client import REGISTRY

from chain.errors import RpcError, RpcHttpError, RpcMalformedResponse, RpcTransportError
from chain.failover import FailoverRpc, backoff_delay
from chain.rpc import RpcClient, to_int
from discograph.localchain import Anvil
from discograph.processes import free_port

ANVIL_CHAIN_ID_HEX = "0x7a69"
TOO_MANY_RESULTS = "query returned more than 10000 results"


@pytest_asyncio.fixture
async def proxy(anvil: Anvil) -> AsyncIterator[FaultyRpcServer]:
    async with FaultyRpcServer(upstream=anvil.rpc_url) as server:
        yield server


@pytest_asyncio.fixture
async def second_proxy(anvil: Anvil) -> AsyncIterator[FaultyRpcServer]:
    async with FaultyRpcServer(upstream=anvil.rpc_url) as server:
        yield server


def fast(urls: list[str], *, timeout: float = 5.0, max_attempts: int = 6) -> FailoverRpc:
    """A FailoverRpc whose backoff is short enough for tests."""
    return FailoverRpc(
        urls,
        timeout=timeout,
        max_attempts=max_attempts,
        base_delay=0.01,
        max_delay=0.05,
        rng=random.Random(0),
    )


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# --- retries ---------------------------------------------------------------------------------


async def test_call_returns_real_result_after_a_429_and_a_500(proxy: FaultyRpcServer) -> None:
    proxy.inject(http_status(429), http_status(500))
    async with fast([proxy.url]) as rpc:
        assert await rpc.call("eth_chainId") == ANVIL_CHAIN_ID_HEX
    assert proxy.applied == [("eth_chainId", "http_429"), ("eth_chainId", "http_500")]
    assert len(proxy.requests) == 3


async def test_retry_after_of_a_429_is_waited_for(proxy: FaultyRpcServer) -> None:
    proxy.inject(http_status(429, retry_after=0.3))
    async with FailoverRpc([proxy.url], base_delay=0.001, max_delay=1.0) as rpc:
        started = time.monotonic()
        assert await rpc.call("eth_chainId") == ANVIL_CHAIN_ID_HEX
        assert time.monotonic() - started >= 0.3
    assert len(proxy.requests) == 2


async def test_retry_after_longer_than_max_delay_is_capped(proxy: FaultyRpcServer) -> None:
    proxy.inject(http_status(429, retry_after=60))
    async with FailoverRpc([proxy.url], base_delay=0.001, max_delay=0.1) as rpc:
        started = time.monotonic()
        assert await rpc.call("eth_chainId") == ANVIL_CHAIN_ID_HEX
        assert time.monotonic() - started < 2.0


async def test_truncated_body_cut_connection_and_timeout_are_retried(
    proxy: FaultyRpcServer,
) -> None:
    proxy.inject(truncated_body(), cut_connection(), slow(5.0))
    async with fast([proxy.url], timeout=0.3) as rpc:
        started = time.monotonic()
        assert await rpc.call("eth_chainId") == ANVIL_CHAIN_ID_HEX
        assert time.monotonic() - started < 3.0
    assert [name for _, name in proxy.applied] == ["truncated_body", "cut_connection", "slow_5.0s"]
    assert len(proxy.requests) == 4


async def test_json_rpc_error_is_raised_at_once_without_retry(proxy: FaultyRpcServer) -> None:
    proxy.inject_for("eth_getLogs", rpc_error(-32005, TOO_MANY_RESULTS))
    async with fast([proxy.url]) as rpc:
        with pytest.raises(RpcError) as caught:
            await rpc.call("eth_getLogs", [{"fromBlock": "0x0", "toBlock": "latest"}])
    assert caught.value.code == -32005
    assert caught.value.rpc_message == TOO_MANY_RESULTS
    assert len(proxy.requests) == 1


async def test_http_400_is_raised_at_once_without_retry(proxy: FaultyRpcServer) -> None:
    proxy.inject(http_status(400, "bad request"))
    async with fast([proxy.url, proxy.url]) as rpc:
        with pytest.raises(RpcHttpError) as caught:
            await rpc.call("eth_chainId")
        assert caught.value.status == 400
        assert rpc.current == 0
    assert len(proxy.requests) == 1


async def test_all_urls_down_raises_transport_error_after_max_attempts() -> None:
    async with FailoverRpc(
        [dead_url(), dead_url()], max_attempts=4, base_delay=0.01, max_delay=0.05
    ) as rpc:
        started = time.monotonic()
        with pytest.raises(RpcTransportError) as caught:
            await rpc.call("eth_chainId")
        assert time.monotonic() - started < 2.0
    assert not isinstance(caught.value, RpcHttpError)


async def test_malformed_answers_until_max_attempts_raise_the_last_error(
    proxy: FaultyRpcServer,
) -> None:
    proxy.inject(truncated_body(), truncated_body(), truncated_body())
    async with fast([proxy.url], max_attempts=3) as rpc:
        with pytest.raises(RpcMalformedResponse):
            await rpc.call("eth_chainId")
    assert len(proxy.requests) == 3
    assert proxy.pending_faults == 0


# --- fail-over -------------------------------------------------------------------------------


async def test_calls_fail_over_to_the_second_url_and_stay_there(
    proxy: FaultyRpcServer, second_proxy: FaultyRpcServer
) -> None:
    proxy.chaos(1.0, [http_status(500)], seed=1)
    async with fast([proxy.url, second_proxy.url]) as rpc:
        for _ in range(4):
            assert await rpc.call("eth_chainId") == ANVIL_CHAIN_ID_HEX
        assert rpc.current == 1
        # The first node recovers: the client has no reason to leave the one that works.
        proxy.calm()
        assert await rpc.batch([("eth_chainId", []), ("net_version", [])]) == [
            ANVIL_CHAIN_ID_HEX,
            "31337",
        ]
    assert len(proxy.requests) == 1
    assert len(second_proxy.requests) == 5


async def test_concurrent_failures_on_one_url_move_all_calls_to_the_next(
    proxy: FaultyRpcServer, second_proxy: FaultyRpcServer
) -> None:
    # With two URLs, every failing call rotating on its own would send half of them back to the
    # broken node; only the first failure moves the client.
    proxy.chaos(1.0, [http_status(503)], seed=1)
    async with fast([proxy.url, second_proxy.url]) as rpc:
        results = await asyncio.gather(*(rpc.call("eth_blockNumber") for _ in range(20)))
        assert rpc.current == 1
    assert len(results) == 20
    assert len(proxy.requests) == 20
    assert len(second_proxy.requests) == 20


async def test_call_each_reveals_a_lagging_node(
    rpc: RpcClient, proxy: FaultyRpcServer, second_proxy: FaultyRpcServer
) -> None:
    await rpc.call("anvil_mine", ["0x5"])
    second_proxy.inject_for(
        "eth_blockNumber", map_result(lambda head: hex(int(head, 16) - 3), name="lagging_head")
    )
    async with fast([proxy.url, second_proxy.url, dead_url()]) as failover:
        good, lagging, dead = await failover.call_each("eth_blockNumber")
    assert isinstance(good, str)
    assert isinstance(lagging, str)
    assert to_int(good) == 5
    assert to_int(lagging) == 2
    assert isinstance(dead, RpcTransportError)
    assert second_proxy.applied == [("eth_blockNumber", "lagging_head")]


async def test_call_on_asks_one_url_without_retry(proxy: FaultyRpcServer) -> None:
    proxy.inject(http_status(500))
    async with fast([dead_url(), proxy.url]) as rpc:
        with pytest.raises(RpcHttpError):
            await rpc.call_on(1, "eth_chainId")
        assert await rpc.call_on(1, "eth_chainId") == ANVIL_CHAIN_ID_HEX
    assert len(proxy.requests) == 2


# --- batches ---------------------------------------------------------------------------------


async def test_per_method_fault_empties_one_element_of_a_batch(
    rpc: RpcClient, album_contract: str, proxy: FaultyRpcServer
) -> None:
    calls = [
        ("eth_getLogs", [{"address": album_contract, "fromBlock": "0x0", "toBlock": "latest"}]),
        ("eth_blockNumber", []),
    ]
    async with fast([proxy.url]) as failover:
        logs, head = await failover.batch(calls)
        assert logs  # the deployment granted roles: there are logs to hide
        proxy.inject_for("eth_getLogs", empty_result())
        emptied, head_again = await failover.batch(calls)
    assert emptied == []
    assert head_again == head == await rpc.call("eth_blockNumber")
    assert proxy.applied == [("eth_getLogs", "empty_result")]


async def test_map_result_corrupts_each_log_block_hash(
    album_contract: str, proxy: FaultyRpcServer
) -> None:
    bad_hash = "0x" + "ee" * 32
    proxy.inject_for(
        "eth_getLogs",
        map_result(lambda logs: [{**log, "blockHash": bad_hash} for log in logs]),
    )
    query = [{"address": album_contract, "fromBlock": "0x0", "toBlock": "latest"}]
    async with fast([proxy.url]) as failover:
        corrupted, _ = await failover.batch([("eth_getLogs", query), ("eth_chainId", [])])
        genuine = await failover.call("eth_getLogs", query)
    assert corrupted
    assert {log["blockHash"] for log in corrupted} == {bad_hash}
    assert bad_hash not in {log["blockHash"] for log in genuine}


async def test_json_rpc_error_in_one_batch_element_raises_at_once(proxy: FaultyRpcServer) -> None:
    proxy.inject_for("eth_getLogs", rpc_error(-32005, TOO_MANY_RESULTS))
    async with fast([proxy.url]) as rpc:
        with pytest.raises(RpcError) as caught:
            await rpc.batch([("eth_chainId", []), ("eth_getLogs", [{"fromBlock": "0x0"}])])
    assert caught.value.method == "eth_getLogs"
    assert caught.value.code == -32005
    assert len(proxy.requests) == 1


async def test_whole_response_fault_aimed_at_one_batch_element_fails_the_batch(
    proxy: FaultyRpcServer,
) -> None:
    proxy.inject_for("eth_blockNumber", http_status(500))
    async with fast([proxy.url]) as rpc:
        chain_id, head = await rpc.batch([("eth_chainId", []), ("eth_blockNumber", [])])
    assert chain_id == ANVIL_CHAIN_ID_HEX
    assert to_int(head) >= 0
    assert proxy.applied == [("eth_blockNumber", "http_500")]
    assert len(proxy.requests) == 2


async def test_empty_batch_sends_nothing(proxy: FaultyRpcServer) -> None:
    async with fast([proxy.url]) as rpc:
        assert await rpc.batch([]) == []
    assert proxy.requests == []


# --- chaos mode ------------------------------------------------------------------------------


async def _chaos_run(upstream: str, seed: int) -> tuple[list[tuple[str, str]], list[str]]:
    """Twenty single calls through a proxy in chaos mode; the faults applied and the outcomes."""
    outcomes: list[str] = []
    async with FaultyRpcServer(upstream=upstream) as server:
        server.chaos(
            0.5, [http_status(500), truncated_body(), empty_result()], seed, {"eth_chainId"}
        )
        async with RpcClient(server.url) as client:
            for _ in range(20):
                try:
                    outcomes.append(repr(await client.call("eth_chainId")))
                except (RpcTransportError, RpcMalformedResponse) as error:
                    outcomes.append(type(error).__name__)
                # Not a chaos method: never faulted.
                assert await client.call("net_version") == "31337"
            server.calm()
            assert await client.call("eth_chainId") == ANVIL_CHAIN_ID_HEX
        return server.applied, outcomes


async def test_chaos_with_the_same_seed_applies_the_same_faults(anvil: Anvil) -> None:
    applied, outcomes = await _chaos_run(anvil.rpc_url, seed=42)
    applied_again, outcomes_again = await _chaos_run(anvil.rpc_url, seed=42)
    other_applied, _ = await _chaos_run(anvil.rpc_url, seed=7)
    assert applied == applied_again
    assert outcomes == outcomes_again
    assert 3 <= len(applied) <= 17
    assert {method for method, _ in applied} == {"eth_chainId"}
    assert {name for _, name in applied} == {"http_500", "truncated_body", "empty_result"}
    assert other_applied != applied


async def test_failover_rides_out_chaos_on_a_single_url(proxy: FaultyRpcServer) -> None:
    proxy.chaos(0.3, [http_status(429), http_status(502), truncated_body()], seed=3)
    async with fast([proxy.url], max_attempts=10) as rpc:
        for _ in range(15):
            assert await rpc.call("eth_chainId") == ANVIL_CHAIN_ID_HEX
    assert proxy.applied  # the seed does fault some calls
    assert len(proxy.requests) == 15 + len(proxy.applied)


# --- observability ---------------------------------------------------------------------------


async def test_metrics_count_every_attempt_error_and_latency(proxy: FaultyRpcServer) -> None:
    before_requests = sample("discograph_rpc_requests_total", method="eth_chainId")
    before_errors = sample("discograph_rpc_errors_total", method="eth_chainId", kind="RpcHttpError")
    before_latency = sample("discograph_rpc_latency_seconds_count", method="eth_chainId")
    before_batches = sample("discograph_rpc_requests_total", method="batch")
    proxy.inject(http_status(429), http_status(500))
    async with fast([proxy.url]) as rpc:
        await rpc.call("eth_chainId")
        await rpc.batch([("eth_chainId", []), ("eth_blockNumber", [])])
    assert sample("discograph_rpc_requests_total", method="eth_chainId") == before_requests + 3
    assert (
        sample("discograph_rpc_errors_total", method="eth_chainId", kind="RpcHttpError")
        == before_errors + 2
    )
    assert sample("discograph_rpc_latency_seconds_count", method="eth_chainId") == (
        before_latency + 3
    )
    assert sample("discograph_rpc_requests_total", method="batch") == before_batches + 1


async def test_retry_warning_names_method_and_url_index_but_no_secret(
    proxy: FaultyRpcServer, caplog: pytest.LogCaptureFixture
) -> None:
    secret_url = proxy.url + "/v3/secret-api-key"
    raw_tx = "0x02f8" + "ab" * 60
    with caplog.at_level(logging.WARNING, logger="discograph.rpc"):
        async with fast([secret_url]) as rpc:
            proxy.inject(http_status(503))
            assert await rpc.call("eth_chainId") == ANVIL_CHAIN_ID_HEX
            proxy.inject(http_status(503))
            with pytest.raises(RpcError):  # anvil cannot decode the fake transaction
                await rpc.call("eth_sendRawTransaction", [raw_tx])
    warnings = [r.getMessage() for r in caplog.records if r.name == "discograph.rpc"]
    assert len(warnings) == 2
    assert "eth_chainId" in warnings[0]
    assert "url #0" in warnings[0]
    assert "RpcHttpError" in warnings[0]
    assert "eth_sendRawTransaction" in warnings[1]
    assert all("secret-api-key" not in text and raw_tx[:20] not in text for text in warnings)


# --- pure backoff ----------------------------------------------------------------------------


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    rng = random.Random(5)
    error = RpcTransportError("refused")
    for attempt in range(8):
        ceiling = min(1.0, 0.1 * 2**attempt)
        delays = [
            backoff_delay(attempt, error, base_delay=0.1, max_delay=1.0, rng=rng)
            for _ in range(200)
        ]
        assert all(0.0 <= delay <= ceiling for delay in delays)
        assert max(delays) > ceiling * 0.8  # jitter spans the range, not a fixed delay
        assert min(delays) < ceiling * 0.2


def test_backoff_waits_at_least_retry_after_but_never_above_max_delay() -> None:
    rng = random.Random(5)
    asked = RpcHttpError(429, "slow down", retry_after=0.5)
    assert all(
        backoff_delay(0, asked, base_delay=0.01, max_delay=2.0, rng=rng) >= 0.5 for _ in range(50)
    )
    greedy = RpcHttpError(429, "slow down", retry_after=3600)
    assert backoff_delay(0, greedy, base_delay=0.01, max_delay=2.0, rng=rng) == 2.0


def test_failover_rejects_a_single_string_or_no_url() -> None:
    with pytest.raises(TypeError):
        FailoverRpc("http://127.0.0.1:8545")
    with pytest.raises(ValueError, match="at least one URL"):
        FailoverRpc([])


# --- the proxy from synchronous code ---------------------------------------------------------


def _post(url: str, payload: object) -> tuple[int, object]:
    request = urllib.request.Request(  # noqa: S310 (a local http URL)
        url, data=json.dumps(payload).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, None


def test_threaded_proxy_serves_synchronous_clients_and_takes_faults_from_them(
    anvil: Anvil,
) -> None:
    with FaultyRpcServer(upstream=anvil.rpc_url) as server:
        call = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
        assert _post(server.url, call) == (200, {"jsonrpc": "2.0", "id": 1, "result": "0x7a69"})
        server.inject(http_status(500))
        server.inject_for("eth_chainId", rpc_error(-32000, "header not found"))
        status, answer = _post(server.url, call)
        assert status == 200
        assert answer == {
            "jsonrpc": "2.0",
            "id": 1,
            "error": {"code": -32000, "message": "header not found"},
        }
        assert _post(server.url, call)[0] == 500
        assert server.applied == [("eth_chainId", "rpc_error_-32000"), ("eth_chainId", "http_500")]
    with pytest.raises(urllib.error.URLError):
        _post(server.url, call)
