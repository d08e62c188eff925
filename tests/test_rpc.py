"""chain.rpc.RpcClient against a real anvil, and against a fault injector in front of it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from faults import (
    FaultyRpcServer,
    cut_connection,
    http_status,
    no_result_no_error,
    slow,
    truncated_body,
    wrong_id,
)

from chain.errors import (
    RpcError,
    RpcHttpError,
    RpcMalformedResponse,
    RpcTimeout,
    RpcTransportError,
)
from chain.rpc import RpcClient, to_int, to_quantity
from chain.signer import Signer
from discograph.localchain import ANVIL_DEV_KEYS, Anvil
from discograph.processes import free_port

ANVIL_CHAIN_ID_HEX = "0x7a69"  # 31337


@pytest_asyncio.fixture
async def faulty_node(anvil: Anvil) -> AsyncIterator[FaultyRpcServer]:
    """A fault injector in front of this test's anvil: scripted faults first, then pass-through."""
    async with FaultyRpcServer(upstream=anvil.rpc_url) as server:
        yield server


@pytest_asyncio.fixture
async def faulty_client(faulty_node: FaultyRpcServer) -> AsyncIterator[RpcClient]:
    async with RpcClient(faulty_node.url) as client:
        yield client


# --- against a real anvil -------------------------------------------------------------------


async def test_chain_id_call_returns_anvil_chain_id(rpc: RpcClient) -> None:
    assert await rpc.call("eth_chainId") == ANVIL_CHAIN_ID_HEX


async def test_batch_returns_results_in_call_order(rpc: RpcClient) -> None:
    dev_address = Signer(ANVIL_DEV_KEYS[0]).address
    chain_id, balance, block = await rpc.batch(
        [
            ("eth_chainId", []),
            ("eth_getBalance", [dev_address, "latest"]),
            ("eth_getBlockByNumber", ["0x0", False]),
        ]
    )
    assert chain_id == ANVIL_CHAIN_ID_HEX
    assert to_int(balance) == 10_000 * 10**18  # anvil funds each dev account with 10k ether
    assert isinstance(block, dict)
    assert to_int(block["number"]) == 0
    # Reversed order gives reversed results: the client maps answers by id, not position.
    block_again, chain_id_again = await rpc.batch(
        [("eth_getBlockByNumber", ["0x0", False]), ("eth_chainId", [])]
    )
    assert block_again["hash"] == block["hash"]
    assert chain_id_again == ANVIL_CHAIN_ID_HEX


async def test_empty_batch_returns_empty_list_without_a_request(
    faulty_node: FaultyRpcServer, faulty_client: RpcClient
) -> None:
    assert await faulty_client.batch([]) == []
    assert faulty_node.requests == []


async def test_unknown_method_raises_rpc_error_with_code(rpc: RpcClient) -> None:
    with pytest.raises(RpcError) as caught:
        await rpc.call("discograph_noSuchMethod")
    assert caught.value.method == "discograph_noSuchMethod"
    assert caught.value.code == -32601  # JSON-RPC "method not found"


async def test_batch_with_one_failing_call_raises_naming_that_method(rpc: RpcClient) -> None:
    with pytest.raises(RpcError) as caught:
        await rpc.batch(
            [
                ("eth_chainId", []),
                ("discograph_noSuchMethod", []),
                ("eth_blockNumber", []),
            ]
        )
    assert caught.value.method == "discograph_noSuchMethod"
    assert "discograph_noSuchMethod" in str(caught.value)


async def test_fifty_concurrent_calls_all_succeed_on_one_session(rpc: RpcClient) -> None:
    await rpc.call("eth_blockNumber")
    session = rpc._session
    results = await asyncio.gather(*(rpc.call("eth_blockNumber") for _ in range(50)))
    assert len(results) == 50
    assert all(isinstance(result, str) and result.startswith("0x") for result in results)
    assert rpc._session is session


async def test_concurrent_calls_reuse_a_bounded_connection_pool(
    faulty_node: FaultyRpcServer,
) -> None:
    async with RpcClient(faulty_node.url, max_connections=4) as client:
        results = await asyncio.gather(*(client.call("eth_chainId") for _ in range(40)))
    assert results == [ANVIL_CHAIN_ID_HEX] * 40
    assert len(faulty_node.requests) == 40
    assert 1 <= len(faulty_node.peers) <= 4


async def test_concurrent_calls_use_distinct_request_ids(
    faulty_node: FaultyRpcServer, faulty_client: RpcClient
) -> None:
    await asyncio.gather(
        faulty_client.batch([("eth_chainId", []), ("eth_blockNumber", [])]),
        *(faulty_client.call("eth_chainId") for _ in range(5)),
        faulty_client.batch([("eth_chainId", []), ("eth_blockNumber", []), ("net_version", [])]),
    )
    ids: list[int] = []
    for body in faulty_node.requests:
        payload = json.loads(body)
        ids.extend(call["id"] for call in (payload if isinstance(payload, list) else [payload]))
    assert len(ids) == 10
    assert len(set(ids)) == 10


# --- fault injection ------------------------------------------------------------------------


async def test_http_429_is_a_retryable_error(
    faulty_node: FaultyRpcServer, faulty_client: RpcClient
) -> None:
    faulty_node.inject(http_status(429, "slow down"))
    with pytest.raises(RpcHttpError) as caught:
        await faulty_client.call("eth_chainId")
    assert caught.value.status == 429
    assert caught.value.retryable
    assert isinstance(caught.value, RpcTransportError)


async def test_http_500_is_a_retryable_error(
    faulty_node: FaultyRpcServer, faulty_client: RpcClient
) -> None:
    faulty_node.inject(http_status(500))
    with pytest.raises(RpcHttpError) as caught:
        await faulty_client.call("eth_chainId")
    assert caught.value.status == 500
    assert caught.value.retryable


async def test_http_400_is_not_retryable(
    faulty_node: FaultyRpcServer, faulty_client: RpcClient
) -> None:
    faulty_node.inject(http_status(400, "bad request"))
    with pytest.raises(RpcHttpError) as caught:
        await faulty_client.call("eth_chainId")
    assert caught.value.status == 400
    assert not caught.value.retryable


async def test_truncated_json_body_is_malformed(
    faulty_node: FaultyRpcServer, faulty_client: RpcClient
) -> None:
    faulty_node.inject(truncated_body())
    with pytest.raises(RpcMalformedResponse):
        await faulty_client.call("eth_chainId")


async def test_connection_dropped_mid_body_is_malformed(
    faulty_node: FaultyRpcServer, faulty_client: RpcClient
) -> None:
    faulty_node.inject(cut_connection())
    with pytest.raises(RpcMalformedResponse):
        await faulty_client.call("eth_chainId")


async def test_answer_with_wrong_id_is_malformed(
    faulty_node: FaultyRpcServer, faulty_client: RpcClient
) -> None:
    faulty_node.inject(wrong_id())
    with pytest.raises(RpcMalformedResponse, match="id"):
        await faulty_client.call("eth_chainId")


async def test_batch_answer_with_wrong_ids_is_malformed(
    faulty_node: FaultyRpcServer, faulty_client: RpcClient
) -> None:
    faulty_node.inject(wrong_id())
    with pytest.raises(RpcMalformedResponse):
        await faulty_client.batch([("eth_chainId", []), ("eth_blockNumber", [])])


async def test_answer_without_result_or_error_is_malformed(
    faulty_node: FaultyRpcServer, faulty_client: RpcClient
) -> None:
    faulty_node.inject(no_result_no_error())
    with pytest.raises(RpcMalformedResponse, match="neither result nor error"):
        await faulty_client.call("eth_chainId")


async def test_null_result_is_a_valid_answer(rpc: RpcClient) -> None:
    # `result: null` (an unknown transaction) must not be mistaken for a missing result.
    unknown_tx = "0x" + "ab" * 32
    assert await rpc.call("eth_getTransactionReceipt", [unknown_tx]) is None


async def test_slow_answer_raises_timeout_which_is_a_transport_error(
    faulty_node: FaultyRpcServer,
) -> None:
    faulty_node.inject(slow(5.0))
    async with RpcClient(faulty_node.url, timeout=0.3) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RpcTimeout) as caught:
            await client.call("eth_chainId")
        assert loop.time() - started < 2.0
    assert isinstance(caught.value, RpcTransportError)


async def test_connection_refused_is_a_transport_error() -> None:
    async with RpcClient(f"http://127.0.0.1:{free_port()}", timeout=2.0) as client:
        with pytest.raises(RpcTransportError) as caught:
            await client.call("eth_chainId")
    assert not isinstance(caught.value, RpcHttpError | RpcTimeout)


async def test_client_recovers_after_each_scripted_fault(
    faulty_node: FaultyRpcServer, faulty_client: RpcClient
) -> None:
    faulty_node.inject(
        http_status(429),
        http_status(500),
        truncated_body(),
        cut_connection(),
        wrong_id(),
        no_result_no_error(),
    )
    failures = []
    for _ in range(6):
        with pytest.raises((RpcTransportError, RpcMalformedResponse)) as caught:
            await faulty_client.call("eth_chainId")
        failures.append(type(caught.value))
    assert failures == [
        RpcHttpError,
        RpcHttpError,
        RpcMalformedResponse,
        RpcMalformedResponse,
        RpcMalformedResponse,
        RpcMalformedResponse,
    ]
    assert faulty_node.pending_faults == 0
    # Script exhausted: the next calls reach anvil through the proxy and succeed.
    assert await faulty_client.call("eth_chainId") == ANVIL_CHAIN_ID_HEX
    assert await faulty_client.batch([("eth_chainId", []), ("net_version", [])]) == [
        ANVIL_CHAIN_ID_HEX,
        "31337",
    ]
    assert len(faulty_node.requests) == 8


async def test_client_recovers_after_a_timeout(faulty_node: FaultyRpcServer) -> None:
    faulty_node.inject(slow(5.0))
    async with RpcClient(faulty_node.url, timeout=0.3) as client:
        with pytest.raises(RpcTimeout):
            await client.call("eth_chainId")
        assert await client.call("eth_chainId") == ANVIL_CHAIN_ID_HEX


# --- pure helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "value"),
    [("0x0", 0), ("0x1", 1), ("0x1a", 26), ("0x7a69", 31337), (hex(2**256 - 1), 2**256 - 1)],
)
def test_quantity_round_trips_through_int(quantity: str, value: int) -> None:
    assert to_int(quantity) == value
    assert to_quantity(value) == quantity
    assert to_int(to_quantity(value)) == value


def test_quantity_parsing_accepts_uppercase_hex() -> None:
    assert to_int("0xABCDEF") == 0xABCDEF
