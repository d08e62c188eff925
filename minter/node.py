"""What the minter asks the node: estimates, fees, nonces, broadcasts, receipts, block hashes.

The I/O edge of the minter over a JSON-RPC client (`FailoverRpc` in the service). Answers come
back typed; a broadcast never raises for the node's word about the transaction, because every
signed transaction is recorded before it is sent and can be sent again.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from chain.errors import ChainError, RpcError, RpcMalformedResponse, RpcRevert
from chain.rpc import to_int
from minter.fees import Fees, fresh_fees
from minter.reasons import FALLBACK, revert_reason

log = logging.getLogger("discograph.minter")

BATCH_CHUNK = 100  # calls per JSON-RPC batch request


class Rpc(Protocol):
    async def call(self, method: str, params: Sequence[Any] = ()) -> Any: ...

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]: ...


class Sent(enum.Enum):
    """What became of a broadcast."""

    ACCEPTED = "accepted"
    # The node has a transaction of this nonce already (this one, or a variant of it, in the
    # pool or mined): nothing to surface, the tracking loop finds whichever is mined.
    KNOWN = "known"
    # The pool holds a same-nonce transaction paying more: a later replacement bids higher.
    UNDERPRICED = "underpriced"
    # Refused for another reason, or the node was unreachable: sent again later.
    FAILED = "failed"


_KNOWN = ("already known", "already imported", "known transaction", "nonce too low")


def classify_send_error(error: ChainError) -> Sent:
    message = error.rpc_message.lower() if isinstance(error, RpcError) else ""
    if any(words in message for words in _KNOWN):
        return Sent.KNOWN
    if "underpriced" in message:
        return Sent.UNDERPRICED
    return Sent.FAILED


@dataclass(frozen=True)
class ChainView:
    head: int
    finalized: int
    mined_count: int  # the signer's nonce count at the head (mined transactions)
    pending_count: int  # … including the node's pool


@dataclass(frozen=True)
class Market:
    fees: Fees
    pending_count: int


class Node:
    """Typed chain reads and writes for one signer address."""

    def __init__(self, rpc: Rpc, address: str) -> None:
        self.rpc = rpc
        self.address = address

    async def chain_id(self) -> int:
        return to_int(await self.rpc.call("eth_chainId"))

    async def estimate_gas(self, call: dict[str, Any]) -> int:
        """`eth_estimateGas` from the signer; raises `RpcRevert` when the call would revert."""
        return to_int(await self.rpc.call("eth_estimateGas", [{"from": self.address, **call}]))

    async def market(self) -> Market:
        """Fees a new transaction should offer now, and the signer's pending nonce count."""
        block, tip, pending = await self.rpc.batch(
            [
                ("eth_getBlockByNumber", ["latest", False]),
                ("eth_maxPriorityFeePerGas", []),
                ("eth_getTransactionCount", [self.address, "pending"]),
            ]
        )
        base_fee = to_int(block.get("baseFeePerGas") or "0x0")
        return Market(fresh_fees(base_fee, to_int(tip)), to_int(pending))

    async def pending_count(self) -> int:
        return to_int(await self.rpc.call("eth_getTransactionCount", [self.address, "pending"]))

    async def count_at(self, block: int) -> int:
        return to_int(await self.rpc.call("eth_getTransactionCount", [self.address, hex(block)]))

    async def view(self, confirmations: int) -> ChainView:
        head, mined, pending = await self.rpc.batch(
            [
                ("eth_blockNumber", []),
                ("eth_getTransactionCount", [self.address, "latest"]),
                ("eth_getTransactionCount", [self.address, "pending"]),
            ]
        )
        head_number = to_int(head)
        return ChainView(
            head=head_number,
            finalized=finalized_block(head_number, await self._finalized_tag(), confirmations),
            mined_count=to_int(mined),
            pending_count=to_int(pending),
        )

    async def _finalized_tag(self) -> int | None:
        try:
            block = await self.rpc.call("eth_getBlockByNumber", ["finalized", False])
        except RpcError:
            return None  # a node without the tag
        return None if block is None else to_int(block["number"])

    async def broadcast(self, raw_tx: bytes) -> Sent:
        try:
            await self.rpc.call("eth_sendRawTransaction", ["0x" + raw_tx.hex()])
        except ChainError as error:
            outcome = classify_send_error(error)
            if outcome is Sent.FAILED:
                # The error class and the node's message only: never the raw transaction.
                log.warning(
                    "broadcast failed, will send again",
                    extra={"error": type(error).__name__, "detail": str(error)[:200]},
                )
            return outcome
        return Sent.ACCEPTED

    async def receipts(self, hashes: Iterable[bytes]) -> dict[bytes, dict[str, Any]]:
        """Receipts of the mined ones among `hashes` (the others are left out)."""
        wanted = list(dict.fromkeys(hashes))
        answers = await self._batch(
            [("eth_getTransactionReceipt", ["0x" + h.hex()]) for h in wanted]
        )
        found: dict[bytes, dict[str, Any]] = {}
        for tx_hash, receipt in zip(wanted, answers, strict=True):
            if receipt is None:
                continue
            if not isinstance(receipt, dict) or receipt.get("transactionHash") is None:
                raise RpcMalformedResponse(f"not a receipt: {receipt!r:.200}")
            found[tx_hash] = receipt
        return found

    async def block_hashes(self, numbers: Iterable[int]) -> dict[int, bytes | None]:
        """The canonical hash of each block number (None above the node's head)."""
        wanted = sorted(set(numbers))
        answers = await self._batch([("eth_getBlockByNumber", [hex(n), False]) for n in wanted])
        return {
            number: None if block is None else bytes.fromhex(block["hash"][2:])
            for number, block in zip(wanted, answers, strict=True)
        }

    async def revert_reason(self, call: dict[str, Any], block: int) -> str:
        """Why a mined transaction reverted: the same call replayed on the state of its block."""
        try:
            await self.rpc.call("eth_call", [{"from": self.address, **call}, hex(block)])
        except RpcRevert as error:
            return revert_reason(error)
        except RpcError as error:
            log.info("revert reason unavailable", extra={"detail": str(error)[:200]})
        return FALLBACK

    async def _batch(self, calls: list[tuple[str, Sequence[Any]]]) -> list[Any]:
        results: list[Any] = []
        for start in range(0, len(calls), BATCH_CHUNK):
            results += await self.rpc.batch(calls[start : start + BATCH_CHUNK])
        return results


def finalized_block(head: int, finalized_tag: int | None, confirmations: int) -> int:
    """The indexer's rule (indexer.context.ChainView.safe_head): the node's `finalized` block
    when it has the tag, else `head - CONFIRMATIONS`."""
    if finalized_tag is not None:
        return finalized_tag
    return max(head - confirmations, 0)
