"""What the indexer reads from the chain: heads, headers, logs, token URIs; answers checked.

Every answer is validated here before the sync loops see it: a header must be shaped like
one, logs fetched by block hash must carry that hash and number, a range answer must stay in
its range. A bad answer raises `MalformedAnswer` (retried by the caller, never committed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from chain.errors import RpcError
from discograph.encoding import keccak_text
from indexer.decode import WATCHED_TOPICS, abi_string
from indexer.errors import InconsistentAnswer, MalformedAnswer


class Rpc(Protocol):
    async def call(self, method: str, params: Sequence[Any] = ()) -> Any: ...

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]: ...

    async def call_each(self, method: str, params: Sequence[Any] = ()) -> list[Any]: ...


@dataclass(frozen=True, slots=True)
class Header:
    number: int
    hash: bytes
    parent_hash: bytes
    timestamp: int
    logs_bloom: str

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp, UTC)


def parse_header(raw: Any) -> Header:
    try:
        return Header(
            number=int(raw["number"], 16),
            hash=bytes.fromhex(raw["hash"][2:]),
            parent_hash=bytes.fromhex(raw["parentHash"][2:]),
            timestamp=int(raw["timestamp"], 16),
            logs_bloom=str(raw.get("logsBloom") or ""),
        )
    except (KeyError, TypeError, ValueError):
        raise MalformedAnswer(f"not a block header: {raw!r:.200}") from None


def _quantity(raw: Any, what: str) -> int:
    if not isinstance(raw, str) or not raw.startswith("0x"):
        raise MalformedAnswer(f"{what} is not a quantity: {raw!r:.100}")
    try:
        return int(raw, 16)
    except ValueError:
        raise MalformedAnswer(f"{what} is not a quantity: {raw!r:.100}") from None


_TOKEN_URI = "0x" + keccak_text("tokenURI(uint256)")[:4].hex()

# Messages nodes use when an eth_getLogs range holds too many results or takes too long.
_TOO_MANY = ("too many", "more than", "limit", "range", "exceed", "timeout", "too large")


def is_too_many_results(error: RpcError) -> bool:
    message = error.rpc_message.lower()
    return error.code in (-32005, -32602, -32614) or any(word in message for word in _TOO_MANY)


class ChainSource:
    """Typed, validated reads for the indexer over a (fail-over) JSON-RPC client."""

    def __init__(self, rpc: Rpc, contracts: Sequence[bytes]) -> None:
        self.rpc = rpc
        self.contracts = list(contracts)
        self._addresses = ["0x" + c.hex() for c in contracts]
        self._filter_topics = [list(WATCHED_TOPICS)]

    async def head(self) -> int:
        return _quantity(await self.rpc.call("eth_blockNumber"), "eth_blockNumber")

    async def safety(self) -> tuple[int | None, int | None]:
        """(safe, finalized) block numbers from the node's tags; None where it has none."""
        try:
            safe, finalized = await self.rpc.batch(
                [
                    ("eth_getBlockByNumber", ["safe", False]),
                    ("eth_getBlockByNumber", ["finalized", False]),
                ]
            )
        except RpcError:
            return None, None
        return (
            parse_header(safe).number if safe else None,
            parse_header(finalized).number if finalized else None,
        )

    async def headers(self, numbers: Sequence[int]) -> list[Header | None]:
        """Headers by number (None for a block the node does not have yet)."""
        if not numbers:
            return []
        raws = await self.rpc.batch([("eth_getBlockByNumber", [hex(n), False]) for n in numbers])
        headers: list[Header | None] = []
        for number, raw in zip(numbers, raws, strict=True):
            if raw is None:
                headers.append(None)
                continue
            header = parse_header(raw)
            if header.number != number:
                raise InconsistentAnswer(f"asked for block {number}, got {header.number}")
            headers.append(header)
        return headers

    async def header_hashes_everywhere(self, number: int) -> list[bytes | None]:
        """The hash of block `number` according to every configured node."""
        answers = await self.rpc.call_each("eth_getBlockByNumber", [hex(number), False])
        hashes: list[bytes | None] = []
        for answer in answers:
            try:
                hashes.append(parse_header(answer).hash if isinstance(answer, dict) else None)
            except MalformedAnswer:
                hashes.append(None)
        return hashes

    async def logs_in_range(self, first: int, last: int) -> tuple[list[dict[str, Any]], Header]:
        """All watched logs in [first, last] and the header of `last`, checked against each other.

        Raises `RpcError` (callers halve the range on "too many results") and
        `InconsistentAnswer` when the logs of block `last` carry another hash than its header.
        """
        logs, raw_header = await self.rpc.batch(
            [
                (
                    "eth_getLogs",
                    [
                        {
                            "fromBlock": hex(first),
                            "toBlock": hex(last),
                            "address": self._addresses,
                            "topics": self._filter_topics,
                        }
                    ],
                ),
                ("eth_getBlockByNumber", [hex(last), False]),
            ]
        )
        if raw_header is None:
            raise InconsistentAnswer(f"the node does not have block {last} yet")
        header = parse_header(raw_header)
        if not isinstance(logs, list):
            raise MalformedAnswer("eth_getLogs did not answer a list")
        hashes: dict[int, set[str]] = {}
        for log in logs:
            if not isinstance(log, dict):
                raise MalformedAnswer("eth_getLogs answered a non-object log")
            number = _quantity(log.get("blockNumber"), "log blockNumber")
            if not first <= number <= last:
                raise InconsistentAnswer(f"log of block {number} outside [{first}, {last}]")
            hashes.setdefault(number, set()).add(str(log.get("blockHash")))
        await self._check_log_blocks(hashes, header)
        return logs, header

    async def _check_log_blocks(self, hashes: dict[int, set[str]], last: Header) -> None:
        """Every log must name the hash of its block's header: one header per block with logs,
        fetched in one batch (the range's last header is already at hand)."""
        known = {last.number: "0x" + last.hash.hex()}
        missing = sorted(n for n in hashes if n not in known)
        for header in await self.headers(missing):
            if header is None:
                raise InconsistentAnswer("the node lost a block while answering")
            known[header.number] = "0x" + header.hash.hex()
        for number, seen in hashes.items():
            if seen != {known[number]}:
                raise InconsistentAnswer(f"logs of block {number} do not match its header")

    async def logs_of_blocks(self, headers: Sequence[Header]) -> list[list[dict[str, Any]]]:
        """Watched logs of each block, fetched by block hash (EIP-234), checked against it."""
        if not headers:
            return []
        answers = await self.rpc.batch(
            [
                (
                    "eth_getLogs",
                    [
                        {
                            "blockHash": "0x" + h.hash.hex(),
                            "address": self._addresses,
                            "topics": self._filter_topics,
                        }
                    ],
                )
                for h in headers
            ]
        )
        for header, logs in zip(headers, answers, strict=True):
            if not isinstance(logs, list):
                raise MalformedAnswer("eth_getLogs did not answer a list")
            expected = "0x" + header.hash.hex()
            for log in logs:
                number = _quantity(log.get("blockNumber"), "log blockNumber")
                if log.get("blockHash") != expected or number != header.number:
                    raise InconsistentAnswer(
                        f"a log fetched for block {header.number} names another block"
                    )
        return answers

    async def logs_from_receipts(self, header: Header) -> list[dict[str, Any]] | None:
        """Our logs of one block from its receipts (a second, independent answer), or None
        when the node cannot serve block receipts."""
        try:
            receipts = await self.rpc.call("eth_getBlockReceipts", ["0x" + header.hash.hex()])
        except RpcError:
            return None
        if not isinstance(receipts, list):
            return None
        watched = set(self._addresses)
        topics = set(self._filter_topics[0])
        expected = "0x" + header.hash.hex()
        found = []
        for receipt in receipts:
            for log in receipt.get("logs") or []:
                address = str(log.get("address", "")).lower()
                log_topics = log.get("topics") or []
                if address in watched and log_topics and log_topics[0] in topics:
                    if log.get("blockHash") != expected:
                        raise InconsistentAnswer("a receipt log names another block")
                    found.append(log)
        return found

    async def token_uris(self, requests: Sequence[tuple[bytes, int, bytes]]) -> list[str | None]:
        """`tokenURI(id)` of (contract, token id, block hash) as of that block (EIP-1898).

        None where the node cannot answer (a token burned since, state pruned): the caller
        keeps the previous URI then.
        """
        if not requests:
            return []
        calls = [
            (
                "eth_call",
                [
                    {"to": "0x" + contract.hex(), "data": f"{_TOKEN_URI}{token_id:064x}"},
                    {"blockHash": "0x" + block_hash.hex()},
                ],
            )
            for contract, token_id, block_hash in requests
        ]
        uris: list[str | None] = []
        # One failing call fails a whole batch, so fall back to calls one by one then.
        try:
            answers: list[Any] = await self.rpc.batch(calls)
        except RpcError:
            answers = []
            for method, params in calls:
                try:
                    answers.append(await self.rpc.call(method, params))
                except RpcError:
                    answers.append(None)
        for answer in answers:
            try:
                uris.append(abi_string(answer) if isinstance(answer, str) and answer else None)
            except MalformedAnswer:
                uris.append(None)
        return uris
