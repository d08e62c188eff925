"""The audit's chain reads: the finalized block, and `ownerOf` / `tokenURI` / `nextTokenId()`
pinned to its hash (EIP-1898), in JSON-RPC batches with a bounded number in flight.

One reverting call fails a whole JSON-RPC batch (`RpcClient.batch` raises the first error), and
`ownerOf` reverts for a token that does not exist: a batch that reverts is split in halves until
the reverting tokens stand alone, so a few absent tokens cost a few more round trips, not one
call per token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from chain.errors import RpcError, RpcMalformedResponse, RpcRevert
from discograph.encoding import keccak_text
from discograph.errors import ConfigError
from indexer.decode import abi_string
from indexer.errors import MalformedAnswer


def _selector(signature: str) -> str:
    return "0x" + keccak_text(signature)[:4].hex()


OWNER_OF = _selector("ownerOf(uint256)")
TOKEN_URI = _selector("tokenURI(uint256)")
NEXT_TOKEN_ID = _selector("nextTokenId()")


class Rpc(Protocol):
    async def call(self, method: str, params: Sequence[Any] = ()) -> Any: ...

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]: ...


@dataclass(frozen=True, slots=True)
class ChainToken:
    """A token as the chain has it at the audited block; `owner` None: it does not exist."""

    owner: bytes | None
    token_uri: str | None


def _word_address(answer: Any) -> bytes:
    if not isinstance(answer, str) or len(answer) != 66 or not answer.startswith("0x"):
        raise RpcMalformedResponse(f"ownerOf answered {answer!r:.80}, not one ABI word")
    return bytes.fromhex(answer[26:])


def _uri(answer: Any) -> str | None:
    if not isinstance(answer, str) or not answer.startswith("0x"):
        raise RpcMalformedResponse(f"tokenURI answered {answer!r:.80}, not ABI data")
    try:
        return abi_string(answer)
    except MalformedAnswer as exc:
        raise RpcMalformedResponse(f"tokenURI: {exc}") from None


async def finalized_point(
    rpc: Rpc, checkpoint_finalized: int | None, indexed: int
) -> tuple[int, bytes]:
    """(number, hash) of the block to audit at: the node's `finalized` block (the checkpoint's
    when the node has no such tag), capped at the indexed block."""
    number: int | None = None
    try:
        tagged = await rpc.call("eth_getBlockByNumber", ["finalized", False])
    except RpcError:
        tagged = None
    if isinstance(tagged, dict):
        number = int(tagged["number"], 16)
    elif checkpoint_finalized is not None:
        number = int(checkpoint_finalized)
    if number is None:
        raise ConfigError("neither the node nor the checkpoint knows a finalized block")
    if isinstance(tagged, dict) and number <= indexed:
        return number, bytes.fromhex(tagged["hash"][2:])
    number = min(number, indexed)
    header = await rpc.call("eth_getBlockByNumber", [hex(number), False])
    if not isinstance(header, dict) or int(header["number"], 16) != number:
        raise RpcMalformedResponse(f"no header for block {number}")
    return number, bytes.fromhex(header["hash"][2:])


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class TokenReader:
    """Token state at one block hash, `calls_per_batch` calls a batch, `in_flight` batches."""

    def __init__(
        self, rpc: Rpc, block_hash: bytes, *, calls_per_batch: int = 200, in_flight: int = 4
    ) -> None:
        self.rpc = rpc
        self.block = {"blockHash": "0x" + block_hash.hex()}
        self.calls_per_batch = calls_per_batch
        self.in_flight = in_flight

    def _call(self, contract: bytes, data: str) -> tuple[str, list[Any]]:
        return ("eth_call", [{"to": "0x" + contract.hex(), "data": data}, self.block])

    async def next_token_id(self, contract: bytes) -> int | None:
        """`nextTokenId()` at the block; None when the contract has no such view."""
        try:
            answer = await self.rpc.call(*self._call(contract, NEXT_TOKEN_ID))
        except RpcRevert:
            return None
        if not isinstance(answer, str) or len(answer) != 66:
            return None  # no such function and a fallback that answers something else
        return int(answer, 16)

    async def tokens(
        self,
        contract: bytes,
        token_ids: Sequence[int],
        *,
        with_uri: bool,
        on_batch: Callable[[int], None] | None = None,
    ) -> dict[int, ChainToken]:
        """Owner (and URI) of each token; batches run `in_flight` at a time."""
        per_token = 2 if with_uri else 1
        chunks = iter(_chunks(token_ids, max(1, self.calls_per_batch // per_token)))
        found: dict[int, ChainToken] = {}

        async def worker() -> None:
            # Workers share one iterator: at most `in_flight` batches are ever in the air.
            for chunk in chunks:
                found.update(await self._read(contract, chunk, with_uri))
                if on_batch is not None:
                    on_batch(len(chunk))

        async with asyncio.TaskGroup() as group:
            for _ in range(self.in_flight):
                group.create_task(worker())
        return found

    async def _read(
        self, contract: bytes, token_ids: Sequence[int], with_uri: bool
    ) -> dict[int, ChainToken]:
        calls = []
        for token_id in token_ids:
            calls.append(self._call(contract, f"{OWNER_OF}{token_id:064x}"))
            if with_uri:
                calls.append(self._call(contract, f"{TOKEN_URI}{token_id:064x}"))
        try:
            answers = await self.rpc.batch(calls)
        except RpcRevert:
            if len(token_ids) == 1:
                return {token_ids[0]: await self._read_alone(contract, token_ids[0], with_uri)}
            middle = len(token_ids) // 2
            first = await self._read(contract, token_ids[:middle], with_uri)
            return first | await self._read(contract, token_ids[middle:], with_uri)
        step = 2 if with_uri else 1
        result = {}
        for index, token_id in enumerate(token_ids):
            owner = _word_address(answers[index * step])
            uri = _uri(answers[index * step + 1]) if with_uri else None
            result[token_id] = ChainToken(owner, uri)
        return result

    async def _read_alone(self, contract: bytes, token_id: int, with_uri: bool) -> ChainToken:
        """One token whose batch reverted: `ownerOf` reverting means it does not exist."""
        try:
            owner = _word_address(
                await self.rpc.call(*self._call(contract, f"{OWNER_OF}{token_id:064x}"))
            )
        except RpcRevert:
            return ChainToken(None, None)
        uri = None
        if with_uri:
            try:
                uri = _uri(
                    await self.rpc.call(*self._call(contract, f"{TOKEN_URI}{token_id:064x}"))
                )
            except RpcRevert:
                uri = None
        return ChainToken(owner, uri)
