"""Send signed transactions and wait for receipts (deploys, dev data; the minter has its own)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from chain.errors import ReceiptTimeout, TransactionReverted
from chain.rpc import RpcClient, to_int
from chain.signer import Signer
from discograph.encoding import checksum_address


async def build_transaction(
    rpc: RpcClient,
    signer: Signer,
    *,
    to: str | None,
    data: str,
    value: int = 0,
    nonce: int | None = None,
    gas: int | None = None,
) -> dict[str, Any]:
    """An EIP-1559 transaction dict with chain id, nonce, gas and fees filled in from the node."""
    call: dict[str, Any] = {"from": signer.address, "data": data, "value": hex(value)}
    if to is not None:
        call["to"] = to
    chain_id, pending_nonce, block, tip = await rpc.batch(
        [
            ("eth_chainId", []),
            ("eth_getTransactionCount", [signer.address, "pending"]),
            ("eth_getBlockByNumber", ["latest", False]),
            ("eth_maxPriorityFeePerGas", []),
        ]
    )
    if gas is None:
        # 20 % headroom over the estimate: state can move between estimate and inclusion.
        gas = to_int(await rpc.call("eth_estimateGas", [call])) * 6 // 5
    base_fee = to_int(block.get("baseFeePerGas") or "0x0")
    priority = to_int(tip)
    tx: dict[str, Any] = {
        "chainId": to_int(chain_id),
        "nonce": to_int(pending_nonce) if nonce is None else nonce,
        "gas": gas,
        "maxPriorityFeePerGas": priority,
        "maxFeePerGas": 2 * base_fee + priority,
        "value": value,
        "data": data,
        "type": 2,
    }
    if to is not None:
        tx["to"] = checksum_address(bytes.fromhex(to[2:]))  # eth-account wants EIP-55
    return tx


async def wait_for_receipt(
    rpc: RpcClient, tx_hash: str, *, timeout: float = 60.0, poll: float = 0.05
) -> dict[str, Any]:
    """Poll until the transaction is mined; raise `ReceiptTimeout` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        receipt = await rpc.call("eth_getTransactionReceipt", [tx_hash])
        if receipt is not None:
            return dict(receipt)
        if time.monotonic() > deadline:
            raise ReceiptTimeout(f"transaction {tx_hash} not mined within {timeout:.0f}s")
        await asyncio.sleep(poll)


async def send_transaction(
    rpc: RpcClient, signer: Signer, *, to: str | None, data: str, timeout: float = 60.0
) -> dict[str, Any]:
    """Build, sign, send and wait; raises `TransactionReverted` when mined with status 0."""
    return (await send_many(rpc, signer, [(to, data)], timeout=timeout))[0]


async def send_many(
    rpc: RpcClient,
    signer: Signer,
    calls: Sequence[tuple[str | None, str]],
    *,
    timeout: float = 60.0,
) -> list[dict[str, Any]]:
    """Send several (to, data) calls from one key with consecutive nonces, then await them all.

    They land in as few blocks as the node allows (one on a chain with a block time), which
    keeps the dev data quick to create. Each call is estimated against the current state, so
    calls that depend on each other belong in separate `send_many` rounds.
    """
    if not calls:
        return []
    base = to_int(await rpc.call("eth_getTransactionCount", [signer.address, "pending"]))
    hashes = []
    for offset, (to, data) in enumerate(calls):
        tx = await build_transaction(rpc, signer, to=to, data=data, nonce=base + offset)
        raw, tx_hash = signer.sign_transaction(tx)
        await rpc.call("eth_sendRawTransaction", [raw])
        hashes.append(tx_hash)
    receipts = await asyncio.gather(
        *(wait_for_receipt(rpc, tx_hash, timeout=timeout) for tx_hash in hashes)
    )
    for tx_hash, receipt in zip(hashes, receipts, strict=True):
        if to_int(receipt["status"]) != 1:
            raise TransactionReverted(tx_hash)
    return list(receipts)
