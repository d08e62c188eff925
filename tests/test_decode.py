"""indexer/decode.py: raw eth_getLogs dicts to domain events, and the logs-bloom checks.

Pure unit tests (no I/O) except the last two, which read the bloom of real anvil blocks.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest
from eth_utils.crypto import keccak
from hypothesis import given
from hypothesis import strategies as st

from chain.rpc import RpcClient
from chain.signer import Signer
from indexer.decode import (
    ALBUM_MINTED_TOPIC,
    BATCH_METADATA_UPDATE_TOPIC,
    MAX_BATCH_METADATA_TOKENS,
    METADATA_UPDATE_TOPIC,
    TRANSFER_TOPIC,
    WATCHED_TOPICS,
    block_may_have_logs,
    bloom_may_contain,
    decode_logs,
)
from indexer.errors import MalformedAnswer
from tests.indexing import ChainDriver

CHAIN_ID = 31337
ALBUM = bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3")
OTHER = bytes.fromhex("e7f1725e7734ce288f8367e1bb143e90bb3f0512")
ALICE = bytes.fromhex("70997970c51812dc3a010c7d01b50e0d17dc79c8")
BOB = bytes.fromhex("3c44cdddb6a900fa2b585dd299e03d12fa4293bc")
BLOCK_HASH = bytes(range(32))
TX_A = b"\xaa" * 32
TX_B = b"\xbb" * 32


def _hex(raw: bytes) -> str:
    return "0x" + raw.hex()


def _word(value: int) -> str:
    return "0x" + value.to_bytes(32, "big").hex()


def _address_topic(address: bytes) -> str:
    return "0x" + bytes(12).hex() + address.hex()


def _raw_log(
    contract: bytes,
    topics: list[str],
    data: str = "0x",
    *,
    log_index: int = 0,
    tx_hash: bytes = TX_A,
    block_number: int = 42,
    block_hash: bytes = BLOCK_HASH,
) -> dict[str, Any]:
    return {
        "address": _hex(contract),
        "topics": topics,
        "data": data,
        "blockNumber": hex(block_number),
        "blockHash": _hex(block_hash),
        "logIndex": hex(log_index),
        "transactionHash": _hex(tx_hash),
        "transactionIndex": "0x0",
        "removed": False,
    }


def transfer_log(
    contract: bytes, sender: bytes, receiver: bytes, token_id: int, **kw: Any
) -> dict[str, Any]:
    topics = [TRANSFER_TOPIC, _address_topic(sender), _address_topic(receiver), _word(token_id)]
    return _raw_log(contract, topics, **kw)


def _abi_string(text: str) -> str:
    raw = text.encode()
    padded = raw + bytes(-len(raw) % 32)
    return "0x" + (32).to_bytes(32, "big").hex() + len(raw).to_bytes(32, "big").hex() + padded.hex()


def album_minted_log(
    contract: bytes, token_id: int, album_id: uuid.UUID, to: bytes, uri: str, **kw: Any
) -> dict[str, Any]:
    album_topic = "0x" + (album_id.bytes + bytes(16)).hex()  # left-aligned in bytes32
    topics = [ALBUM_MINTED_TOPIC, _word(token_id), album_topic, _address_topic(to)]
    return _raw_log(contract, topics, _abi_string(uri), **kw)


def metadata_update_log(contract: bytes, token_id: int, **kw: Any) -> dict[str, Any]:
    return _raw_log(contract, [METADATA_UPDATE_TOPIC], _word(token_id), **kw)


def batch_metadata_update_log(contract: bytes, first: int, last: int, **kw: Any) -> dict[str, Any]:
    data = _word(first) + _word(last)[2:]
    return _raw_log(contract, [BATCH_METADATA_UPDATE_TOPIC], data, **kw)


def standard_bloom(items: list[bytes]) -> str:
    """A logs bloom built the Yellow Paper way (byte array, big-endian bit numbering)."""
    bloom = bytearray(256)
    for item in items:
        digest = keccak(item)
        for i in (0, 2, 4):
            bit = ((digest[i] << 8) | digest[i + 1]) & 2047
            bloom[255 - bit // 8] |= 1 << (bit % 8)
    return _hex(bytes(bloom))


# --- Transfer ----------------------------------------------------------------------------------


def test_transfer_is_decoded_by_slicing_its_topics() -> None:
    log = transfer_log(ALBUM, ALICE, BOB, 7, log_index=3, block_number=42)
    decoded = decode_logs(CHAIN_ID, [log], frozenset({ALBUM}))
    (transfer,) = decoded.transfers
    assert transfer == (CHAIN_ID, ALBUM, 42, BLOCK_HASH, 3, TX_A, ALICE, BOB, 7)
    assert decoded.token_events == []
    assert decoded.clipped == 0


def test_transfer_keeps_a_token_id_near_two_to_the_256() -> None:
    huge = 2**256 - 1
    (transfer,) = decode_logs(
        CHAIN_ID, [transfer_log(ALBUM, ALICE, BOB, huge)], frozenset({ALBUM})
    ).transfers
    assert transfer.token_id == huge
    (almost,) = decode_logs(
        CHAIN_ID, [transfer_log(ALBUM, ALICE, BOB, huge - 12345)], frozenset()
    ).transfers
    assert almost.token_id == huge - 12345


def test_a_mint_comes_from_the_zero_address() -> None:
    (transfer,) = decode_logs(
        CHAIN_ID, [transfer_log(ALBUM, bytes(20), ALICE, 1)], frozenset({ALBUM})
    ).transfers
    assert transfer.from_address == bytes(20)
    assert transfer.to_address == ALICE


def test_erc20_transfer_with_three_topics_is_skipped() -> None:
    erc20 = _raw_log(
        ALBUM,
        [TRANSFER_TOPIC, _address_topic(ALICE), _address_topic(BOB)],
        _word(10**18),
    )
    decoded = decode_logs(CHAIN_ID, [erc20], frozenset({ALBUM}))
    assert decoded.transfers == []
    assert decoded.token_events == []


def test_transfers_of_non_album_contracts_are_kept() -> None:
    decoded = decode_logs(CHAIN_ID, [transfer_log(OTHER, ALICE, BOB, 5)], frozenset({ALBUM}))
    assert [t.contract for t in decoded.transfers] == [OTHER]


# --- AlbumMinted and ERC-4906 ------------------------------------------------------------------


def test_album_minted_decodes_the_left_aligned_uuid_and_a_unicode_uri() -> None:
    album_id = uuid.UUID("0f8fad5b-d9cb-469f-a165-70867728950e")
    uri = "ipfs://bafy/Ærøskøbing — 東京 🎵.json"
    log = album_minted_log(ALBUM, 9, album_id, ALICE, uri, log_index=2)
    (event,) = decode_logs(CHAIN_ID, [log], frozenset({ALBUM})).token_events
    assert event.kind == "album_minted"
    assert event.token_id == 9
    assert event.album_id == album_id
    assert event.token_uri == uri
    assert (event.contract, event.block_number, event.log_index, event.tx_hash) == (
        ALBUM,
        42,
        2,
        TX_A,
    )


def test_album_minted_with_truncated_data_is_malformed() -> None:
    log = album_minted_log(ALBUM, 1, uuid.uuid4(), ALICE, "ipfs://x/a-long-enough-uri.json")
    log["data"] = log["data"][:-20]
    with pytest.raises(MalformedAnswer):
        decode_logs(CHAIN_ID, [log], frozenset({ALBUM}))


def test_metadata_update_of_the_minting_tx_is_folded_into_album_minted() -> None:
    album_id = uuid.uuid4()
    logs = [
        transfer_log(ALBUM, bytes(20), ALICE, 4, log_index=0),
        metadata_update_log(ALBUM, 4, log_index=1),
        album_minted_log(ALBUM, 4, album_id, ALICE, "ipfs://a", log_index=2),
    ]
    decoded = decode_logs(CHAIN_ID, logs, frozenset({ALBUM}))
    assert [(e.kind, e.token_id) for e in decoded.token_events] == [("album_minted", 4)]
    assert len(decoded.transfers) == 1


def test_metadata_update_without_a_mint_in_its_tx_is_kept_without_uri() -> None:
    logs = [
        album_minted_log(ALBUM, 4, uuid.uuid4(), ALICE, "ipfs://a", log_index=0, tx_hash=TX_A),
        # Same tx, another token: not explained by the mint.
        metadata_update_log(ALBUM, 5, log_index=1, tx_hash=TX_A),
        # Same token, another tx: a later setTokenURI.
        metadata_update_log(ALBUM, 4, log_index=2, tx_hash=TX_B),
    ]
    events = decode_logs(CHAIN_ID, logs, frozenset({ALBUM})).token_events
    updates = [(e.token_id, e.tx_hash) for e in events if e.kind == "metadata_update"]
    assert updates == [(5, TX_A), (4, TX_B)]
    assert all(e.token_uri is None and e.album_id is None for e in events[1:])


def test_batch_metadata_update_expands_to_every_token_of_its_range() -> None:
    (first, last) = (10, 14)
    events = decode_logs(
        CHAIN_ID, [batch_metadata_update_log(ALBUM, first, last, log_index=6)], frozenset({ALBUM})
    ).token_events
    assert [e.token_id for e in events] == [10, 11, 12, 13, 14]
    assert {(e.kind, e.log_index, e.token_uri) for e in events} == {("metadata_update", 6, None)}


def test_batch_metadata_update_is_clipped_and_reports_what_it_left_out() -> None:
    extra = 25
    decoded = decode_logs(
        CHAIN_ID,
        [batch_metadata_update_log(ALBUM, 1, MAX_BATCH_METADATA_TOKENS + extra)],
        frozenset({ALBUM}),
    )
    assert len(decoded.token_events) == MAX_BATCH_METADATA_TOKENS
    assert decoded.token_events[-1].token_id == MAX_BATCH_METADATA_TOKENS
    assert decoded.clipped == extra


def test_batch_metadata_update_with_an_inverted_range_yields_nothing() -> None:
    decoded = decode_logs(CHAIN_ID, [batch_metadata_update_log(ALBUM, 9, 3)], frozenset({ALBUM}))
    assert decoded.token_events == []
    assert decoded.clipped == 0


def test_album_events_of_non_album_contracts_are_ignored() -> None:
    logs = [
        album_minted_log(OTHER, 1, uuid.uuid4(), ALICE, "ipfs://x", log_index=0),
        metadata_update_log(OTHER, 1, log_index=1),
        batch_metadata_update_log(OTHER, 1, 3, log_index=2),
        transfer_log(OTHER, bytes(20), ALICE, 1, log_index=3),
    ]
    decoded = decode_logs(CHAIN_ID, logs, frozenset({ALBUM}))
    assert decoded.token_events == []
    assert [t.token_id for t in decoded.transfers] == [1]


def test_unknown_events_are_skipped() -> None:
    approval = keccak(text="Approval(address,address,uint256)")
    logs = [
        _raw_log(ALBUM, [_hex(approval), _address_topic(ALICE), _address_topic(BOB), _word(1)]),
        _raw_log(ALBUM, []),  # anonymous event
    ]
    decoded = decode_logs(CHAIN_ID, logs, frozenset({ALBUM}))
    assert decoded.transfers == []
    assert decoded.token_events == []


# --- malformed answers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field", ["topics", "address", "blockNumber", "blockHash", "logIndex", "transactionHash"]
)
def test_a_log_without_a_required_field_is_malformed(field: str) -> None:
    log = transfer_log(ALBUM, ALICE, BOB, 1)
    del log[field]
    with pytest.raises(MalformedAnswer):
        decode_logs(CHAIN_ID, [log], frozenset({ALBUM}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("blockNumber", 42),
        ("logIndex", None),
        ("blockHash", "0x1234"),
        ("transactionHash", "0x" + "ab" * 31),
        ("address", "0x" + "11" * 19),
    ],
)
@pytest.mark.parametrize("kind", ["transfer", "album_minted"])
def test_a_log_with_a_badly_shaped_field_is_malformed(field: str, value: object, kind: str) -> None:
    if kind == "transfer":
        log = transfer_log(ALBUM, ALICE, BOB, 1)
    else:
        log = album_minted_log(ALBUM, 1, uuid.uuid4(), ALICE, "ipfs://x")
    log[field] = value
    with pytest.raises(MalformedAnswer):
        decode_logs(CHAIN_ID, [log], frozenset({ALBUM}))


@pytest.mark.parametrize("index", [1, 2, 3])
def test_a_transfer_with_a_non_hex_topic_is_malformed(index: int) -> None:
    log = transfer_log(ALBUM, ALICE, BOB, 1)
    log["topics"][index] = "0x" + "zz" * 32
    with pytest.raises(MalformedAnswer):
        decode_logs(CHAIN_ID, [log], frozenset({ALBUM}))


def _non_hex(log: dict[str, Any], field: str) -> dict[str, Any]:
    if field == "topic1":
        log["topics"][1] = "0x" + "zz" * 32
    elif field == "data":
        log["data"] = "0x" + "zz" * 32
    else:
        log[field] = log[field][:2] + "z" * (len(log[field]) - 2)
    return log


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ("album_minted", "blockNumber"),
        ("album_minted", "address"),
        ("album_minted", "topic1"),
        ("metadata_update", "data"),
    ],
)
def test_an_album_event_with_non_hex_text_is_malformed(event: str, field: str) -> None:
    if event == "album_minted":
        log = album_minted_log(ALBUM, 1, uuid.uuid4(), ALICE, "ipfs://x")
    else:
        log = metadata_update_log(ALBUM, 1)
    with pytest.raises(MalformedAnswer):
        decode_logs(CHAIN_ID, [_non_hex(log, field)], frozenset({ALBUM}))


def test_a_transfer_with_a_short_address_topic_is_malformed() -> None:
    log = transfer_log(ALBUM, ALICE, BOB, 1)
    log["topics"][2] = log["topics"][2][:-2]
    with pytest.raises(MalformedAnswer):
        decode_logs(CHAIN_ID, [log], frozenset({ALBUM}))


def test_a_log_that_is_not_a_dict_is_malformed() -> None:
    with pytest.raises(MalformedAnswer):
        decode_logs(CHAIN_ID, ["0xdeadbeef"], frozenset({ALBUM}))  # type: ignore[list-item]


def test_a_removed_log_is_refused() -> None:
    log = transfer_log(ALBUM, ALICE, BOB, 1)
    log["removed"] = True
    with pytest.raises(MalformedAnswer, match="removed"):
        decode_logs(CHAIN_ID, [log], frozenset({ALBUM}))


# --- logs bloom --------------------------------------------------------------------------------


def test_bloom_contains_what_was_added_and_block_may_have_logs_needs_contract_and_topic() -> None:
    bloom = standard_bloom([ALBUM, bytes.fromhex(TRANSFER_TOPIC[2:]), ALICE])
    assert bloom_may_contain(bloom, [ALBUM])
    assert bloom_may_contain(bloom, [OTHER, ALICE])  # any of the items
    assert block_may_have_logs(bloom, [ALBUM])
    assert block_may_have_logs(bloom, [OTHER, ALBUM])


def test_an_empty_bloom_contains_nothing() -> None:
    empty = _hex(bytes(256))
    assert not bloom_may_contain(empty, [ALBUM, OTHER])
    assert not block_may_have_logs(empty, [ALBUM])


def test_a_bloom_of_the_contract_without_a_watched_topic_has_no_logs_for_us() -> None:
    approval = keccak(text="Approval(address,address,uint256)")
    bloom = standard_bloom([ALBUM, approval])
    assert bloom_may_contain(bloom, [ALBUM])
    assert not block_may_have_logs(bloom, [ALBUM])


def test_an_unusable_bloom_is_assumed_to_match() -> None:
    assert bloom_may_contain("", [ALBUM])
    assert bloom_may_contain("not hex", [ALBUM])


@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=30))
def test_a_bloom_built_from_items_contains_every_item(items: list[bytes]) -> None:
    bloom = standard_bloom(items)
    for item in items:
        assert bloom_may_contain(bloom, [item])


@given(st.lists(st.binary(min_size=20, max_size=20), min_size=1, max_size=5), st.randoms())
def test_block_may_have_logs_for_any_watched_topic(
    contracts: list[bytes], rng: random.Random
) -> None:
    topic = rng.choice(WATCHED_TOPICS)
    bloom = standard_bloom([rng.choice(contracts), bytes.fromhex(topic[2:])])
    assert block_may_have_logs(bloom, contracts)


# --- real anvil blocks -------------------------------------------------------------------------


async def test_anvil_blooms_match_a_mint_block_and_reject_an_empty_block(
    rpc: RpcClient, dev_signers: list[Signer]
) -> None:
    driver = ChainDriver(rpc, dev_signers, random.Random(3))
    (contract,) = await driver.deploy(1)
    await driver.mint()
    mint_block = await rpc.call("eth_getBlockByNumber", ["latest", False])
    await rpc.call("anvil_mine", ["0x1"])
    empty_block = await rpc.call("eth_getBlockByNumber", ["latest", False])
    raw = bytes.fromhex(contract[2:])

    assert block_may_have_logs(mint_block["logsBloom"], [raw])
    assert bloom_may_contain(mint_block["logsBloom"], [bytes.fromhex(ALBUM_MINTED_TOPIC[2:])])
    assert int(empty_block["number"], 16) == int(mint_block["number"], 16) + 1
    assert not block_may_have_logs(empty_block["logsBloom"], [raw])
