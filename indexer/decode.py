"""Raw `eth_getLogs` dicts → domain events, by slicing topics (no ABI machinery, no I/O).

Rows come out as plain tuples in the column order of their table, ready for COPY:
`Transfer` ↔ `transfers`, `TokenEvent` ↔ `token_events`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from discograph.encoding import keccak, keccak_text
from indexer.errors import MalformedAnswer


def _topic(signature: str) -> str:
    return "0x" + keccak_text(signature).hex()


TRANSFER_TOPIC = _topic("Transfer(address,address,uint256)")
ALBUM_MINTED_TOPIC = _topic("AlbumMinted(uint256,bytes32,address,string)")
METADATA_UPDATE_TOPIC = _topic("MetadataUpdate(uint256)")
BATCH_METADATA_UPDATE_TOPIC = _topic("BatchMetadataUpdate(uint256,uint256)")
WATCHED_TOPICS = (
    TRANSFER_TOPIC,
    ALBUM_MINTED_TOPIC,
    METADATA_UPDATE_TOPIC,
    BATCH_METADATA_UPDATE_TOPIC,
)
# A BatchMetadataUpdate over more tokens than this is clipped (logged by the caller): one
# log must not turn into millions of rows.
MAX_BATCH_METADATA_TOKENS = 10_000
ZERO_ADDRESS = bytes(20)


class Transfer(NamedTuple):
    chain_id: int
    contract: bytes
    block_number: int
    block_hash: bytes
    log_index: int
    tx_hash: bytes
    from_address: bytes
    to_address: bytes
    token_id: int


class TokenEvent(NamedTuple):
    """An album link (`album_minted`) or a metadata refresh (`metadata_update`) of one token."""

    chain_id: int
    contract: bytes
    block_number: int
    block_hash: bytes
    log_index: int
    tx_hash: bytes
    token_id: int
    kind: str
    album_id: uuid.UUID | None
    token_uri: str | None


class Decoded(NamedTuple):
    transfers: list[Transfer]
    token_events: list[TokenEvent]
    clipped: int  # BatchMetadataUpdate tokens left out


def _int(value: Any, field: str) -> int:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise MalformedAnswer(f"log field {field} is not a hex quantity: {value!r}")
    try:
        return int(value, 16)
    except ValueError:
        raise MalformedAnswer(f"log field {field} is not a hex quantity: {value!r}") from None


def _bytes(value: Any, field: str, size: int) -> bytes:
    if not isinstance(value, str) or len(value) != 2 + 2 * size or value[:2] != "0x":
        raise MalformedAnswer(f"log field {field} is not {size} bytes of hex: {value!r}")
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        raise MalformedAnswer(f"log field {field} is not {size} bytes of hex: {value!r}") from None


def abi_string(data: str) -> str:
    """The single dynamic `string` of ABI-encoded data (offset, length, bytes): an event's
    data or a call's return value."""
    try:
        length = int(data[66:130], 16)
        raw = bytes.fromhex(data[130 : 130 + 2 * length])
    except ValueError:
        raise MalformedAnswer("data is not an ABI string") from None
    if len(raw) != length:
        raise MalformedAnswer("ABI string is truncated")
    return raw.decode("utf-8", errors="replace")


def decode_logs(
    chain_id: int, logs: Iterable[dict[str, Any]], album_contracts: frozenset[bytes]
) -> Decoded:
    """Decode Transfer (any ERC-721), AlbumMinted and ERC-4906 updates (album contracts only).

    ERC-20 Transfers (3 topics) and unknown events are skipped. A `MetadataUpdate` that the
    same transaction's `AlbumMinted` already explains (AlbumNFT emits both on mint) is
    dropped; other metadata updates come out with `token_uri=None`, to be read from the node.
    Raises `MalformedAnswer` on a log that is not shaped like one.
    """
    transfers: list[Transfer] = []
    events: list[TokenEvent] = []
    clipped = 0
    # Hashes and addresses repeat across the logs of a block or transaction: convert once.
    seen: dict[str, bytes] = {}
    append = transfers.append
    for log in logs:
        try:
            topics = log["topics"]
            topic0 = topics[0] if topics else None
            address = log["address"]
            block_number = log["blockNumber"]
            block_hash = log["blockHash"]
            log_index = log["logIndex"]
            tx_hash = log["transactionHash"]
        except (KeyError, TypeError):
            raise MalformedAnswer(f"log without its required fields: {log!r:.200}") from None
        if topic0 == TRANSFER_TOPIC and len(topics) == 4 and not log.get("removed"):
            # The hot path: every field sliced straight out of the JSON strings.
            try:
                if len(topics[1]) != 66 or len(topics[2]) != 66 or len(topics[3]) != 66:
                    raise ValueError("topic is not 32 bytes")
                contract = seen.get(address) or seen.setdefault(
                    address, _bytes(address, "address", 20)
                )
                block = seen.get(block_hash) or seen.setdefault(
                    block_hash, _bytes(block_hash, "blockHash", 32)
                )
                tx = seen.get(tx_hash) or seen.setdefault(
                    tx_hash, _bytes(tx_hash, "transactionHash", 32)
                )
                append(
                    Transfer(
                        chain_id,
                        contract,
                        int(block_number, 16),
                        block,
                        int(log_index, 16),
                        tx,
                        bytes.fromhex(topics[1][26:]),
                        bytes.fromhex(topics[2][26:]),
                        int(topics[3], 16),
                    )
                )
            except (TypeError, ValueError):
                raise MalformedAnswer(f"malformed Transfer log: {log!r:.200}") from None
            continue
        if log.get("removed"):
            raise MalformedAnswer("eth_getLogs answered a removed log")
        if topic0 == TRANSFER_TOPIC:
            continue  # ERC-20 Transfer (3 topics): an amount, not a token
        try:
            clipped += _decode_token_event(chain_id, log, album_contracts, events)
        except (ValueError, TypeError, KeyError, IndexError):
            raise MalformedAnswer(f"malformed log: {log!r:.200}") from None
    return Decoded(transfers, _fold_mint_updates(events), clipped)


def _decode_token_event(
    chain_id: int, log: dict[str, Any], album_contracts: frozenset[bytes], out: list[TokenEvent]
) -> int:
    """AlbumMinted / ERC-4906 events of album contracts into `out`; returns tokens clipped."""
    topics = log["topics"]
    topic0 = topics[0] if topics else None
    contract = _bytes(log["address"], "address", 20)
    if contract not in album_contracts:
        return 0
    common = (
        chain_id,
        contract,
        _int(log["blockNumber"], "blockNumber"),
        _bytes(log["blockHash"], "blockHash", 32),
        _int(log["logIndex"], "logIndex"),
        _bytes(log["transactionHash"], "transactionHash", 32),
    )
    data = log.get("data") or "0x"
    if not isinstance(data, str) or not data.startswith("0x"):
        raise MalformedAnswer(f"log data is not hex: {data!r:.100}")
    if topic0 == ALBUM_MINTED_TOPIC and len(topics) == 4:
        album_id = uuid.UUID(bytes=_bytes(topics[2], "albumId", 32)[:16])
        token_id = int(_bytes(topics[1], "tokenId", 32).hex(), 16)
        out.append(TokenEvent(*common, token_id, "album_minted", album_id, abi_string(data)))
    elif topic0 == METADATA_UPDATE_TOPIC and len(data) >= 66:
        out.append(TokenEvent(*common, int(data[2:66], 16), "metadata_update", None, None))
    elif topic0 == BATCH_METADATA_UPDATE_TOPIC and len(data) >= 130:
        first, last = int(data[2:66], 16), int(data[66:130], 16)
        if last < first:
            return 0
        stop = min(last, first + MAX_BATCH_METADATA_TOKENS - 1)
        out.extend(
            TokenEvent(*common, token_id, "metadata_update", None, None)
            for token_id in range(first, stop + 1)
        )
        return last - stop
    return 0


def _fold_mint_updates(events: list[TokenEvent]) -> list[TokenEvent]:
    minted = {(e.contract, e.tx_hash, e.token_id) for e in events if e.kind == "album_minted"}
    if not minted:
        return events
    return [
        e
        for e in events
        if e.kind == "album_minted" or (e.contract, e.tx_hash, e.token_id) not in minted
    ]


def bloom_may_contain(logs_bloom: str, items: Sequence[bytes]) -> bool:
    """True when the block's 2048-bit logs bloom may hold any of `items` (address or topic)."""
    try:
        bloom = int(logs_bloom, 16)
    except (TypeError, ValueError):
        return True  # no usable bloom: assume it may
    for item in items:
        digest = keccak(item)
        if all(bloom >> (((digest[i] << 8) | digest[i + 1]) & 2047) & 1 for i in (0, 2, 4)):
            return True
    return False


def block_may_have_logs(
    logs_bloom: str, contracts: Sequence[bytes], topics: Sequence[str] = WATCHED_TOPICS
) -> bool:
    """A watched contract and a watched event may both be in the block (bloom check)."""
    return bloom_may_contain(logs_bloom, contracts) and bloom_may_contain(
        logs_bloom, [bytes.fromhex(t[2:]) for t in topics]
    )
