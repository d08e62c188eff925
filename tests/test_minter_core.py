"""The minter's pure core: fees of replacements, revert reasons, tracking decisions."""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from chain.errors import RpcError, RpcTimeout
from minter.fees import MAX_FEE_MULTIPLE, Fees, bumped_fees, fresh_fees
from minter.node import ChainView, Sent, classify_send_error
from minter.reasons import decode_revert_data
from minter.tracking import ALBUM_MINTED_TOPIC, OpenMint, plan_tracking

CONTRACT = bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3")
# What anvil answers for mintAlbum from a key without MINTER_ROLE.
ACCESS_CONTROL_DATA = (
    "0xe2517d3f00000000000000000000000070997970c51812dc3a010c7d01b50e0d17dc79c8"
    "9f2df0fed2c77648de5860a4cc508cd0818c85b8b8a1ab4ceeef8d981c8956a6"
)


@given(
    max_fee=st.integers(0, 10**12),
    priority=st.integers(0, 10**11),
    base_fee=st.integers(0, 10**11),
    tip=st.integers(0, 10**10),
)
def test_replacement_raises_both_fees_by_at_least_an_eighth_or_gives_up(
    max_fee: int, priority: int, base_fee: int, tip: int
) -> None:
    previous, market = Fees(max(max_fee, priority), priority), fresh_fees(base_fee, tip)
    bumped = bumped_fees(previous, market)
    if bumped is None:
        return
    assert bumped.max_fee * 8 >= previous.max_fee * 9
    assert bumped.priority * 8 >= previous.priority * 9
    assert bumped.max_fee > previous.max_fee
    assert bumped.priority > previous.priority
    assert bumped.max_fee >= max(market.max_fee, bumped.priority)
    assert bumped.max_fee <= MAX_FEE_MULTIPLE * max(market.max_fee, 1)


def test_replacement_follows_a_market_that_moved_above_the_bump() -> None:
    bumped = bumped_fees(Fees(100, 10), Fees(max_fee=1_000, priority=50))
    assert bumped == Fees(max_fee=1_000, priority=50)


def test_replacement_stops_far_above_the_market() -> None:
    assert bumped_fees(Fees(8_000, 10), Fees(max_fee=1_000, priority=10)) is None


def test_the_fee_cap_is_a_setting() -> None:
    from discograph.settings import load_settings

    market = Fees(max_fee=1_000, priority=10)
    assert bumped_fees(Fees(1_500, 10), market, cap=1.5) is None
    assert bumped_fees(Fees(1_500, 10), market, cap=2.0) == Fees(max_fee=1_688, priority=12)
    assert load_settings({"MINT_FEE_CAP": "2.5"}, env_file=None).mint_fee_cap == 2.5
    assert load_settings({}, env_file=None).mint_fee_cap == MAX_FEE_MULTIPLE


def test_access_control_revert_is_decoded_with_its_arguments() -> None:
    reason = decode_revert_data(ACCESS_CONTROL_DATA)
    assert reason is not None
    assert reason.startswith("AccessControlUnauthorizedAccount(0x70997970c51812dc3a010c7d01b50e")
    assert reason.endswith("0x9f2df0fed2c77648de5860a4cc508cd0818c85b8b8a1ab4ceeef8d981c8956a6)")


def test_error_string_panic_and_unknown_revert_data() -> None:
    from eth_abi.abi import encode

    assert decode_revert_data("0x08c379a0" + encode(["string"], ["nope"]).hex()) == "nope"
    assert decode_revert_data("0x4e487b71" + encode(["uint256"], [0x11]).hex()) == "Panic(0x11)"
    assert decode_revert_data("0xdeadbeef") == "0xdeadbeef"
    assert decode_revert_data(None) is None
    assert decode_revert_data("0x") is None


def test_send_errors_meaning_the_nonce_is_taken_are_not_failures() -> None:
    def node_says(message: str) -> RpcError:
        return RpcError("eth_sendRawTransaction", -32003, message)

    assert classify_send_error(node_says("already known")) is Sent.KNOWN
    assert classify_send_error(node_says("transaction already imported")) is Sent.KNOWN
    assert classify_send_error(node_says("nonce too low")) is Sent.KNOWN
    assert classify_send_error(node_says("replacement transaction underpriced")) is Sent.UNDERPRICED
    assert classify_send_error(node_says("insufficient funds for gas")) is Sent.FAILED
    assert classify_send_error(RpcTimeout("no answer")) is Sent.FAILED


def _mint(status: str = "submitted", **changes: Any) -> OpenMint:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "status": status,
        "album_id": uuid.uuid4(),
        "to_address": bytes(20),
        "token_uri": "ipfs://x",
        "contract": CONTRACT,
        "nonce": 5,
        "tx_hash": b"\x02" * 32,
        "block_number": None if status == "submitted" else 100,
        "block_hash": None if status == "submitted" else b"\xbb" * 32,
        "idle_seconds": 0.0,
        "raw_tx": b"raw",
        "fees": Fees(2, 1),
        "gas": 100_000,
        "hashes": (b"\x01" * 32, b"\x02" * 32),
    }
    values.update(changes)
    return OpenMint(**values)


def _receipt(
    tx_hash: bytes,
    *,
    block: int = 100,
    block_hash: bytes = b"\xbb" * 32,
    status: int = 1,
    token_id: int = 7,
) -> dict[str, Any]:
    return {
        "transactionHash": "0x" + tx_hash.hex(),
        "blockNumber": hex(block),
        "blockHash": "0x" + block_hash.hex(),
        "status": hex(status),
        "logs": [
            {
                "address": "0x" + CONTRACT.hex(),
                "topics": [ALBUM_MINTED_TOPIC, hex(token_id), "0x00", "0x00"],
            }
        ],
    }


VIEW = ChainView(head=100, finalized=36, mined_count=5, pending_count=6)


def _plan(
    mints: list[OpenMint],
    receipts: dict[bytes, Any],
    canonical: dict[int, Any] | None = None,
    view: ChainView = VIEW,
    confirmations: int = 1,
) -> Any:
    return plan_tracking(
        mints, receipts, canonical or {}, view, confirmations=confirmations, replace_after=30.0
    )


def test_a_mined_original_counts_even_after_a_replacement_was_sent() -> None:
    mint = _mint()
    plan = _plan([mint], {b"\x01" * 32: _receipt(b"\x01" * 32, token_id=9)})
    (mined,) = plan.mined
    assert mined.tx_hash == b"\x01" * 32
    assert mined.token_id == 9
    assert not plan.confirm  # its block is checked against the canonical chain first


def test_a_status_0_receipt_is_a_revert() -> None:
    plan = _plan([_mint()], {b"\x02" * 32: _receipt(b"\x02" * 32, status=0)})
    assert [m.tx_hash for _, m in plan.reverted] == [b"\x02" * 32]


def test_no_receipt_past_the_deadline_is_replaced_and_a_used_nonce_is_suspect() -> None:
    stale, used = _mint(idle_seconds=31.0), _mint(nonce=4, idle_seconds=31.0)
    plan = _plan([stale, used], {})
    assert plan.replace == [stale]
    assert plan.nonce_used == [used]


def test_a_mined_mint_whose_block_changed_goes_back() -> None:
    moved, vanished = _mint("mined"), _mint("confirmed")
    receipts = {moved.tx_hash: _receipt(moved.tx_hash)}
    plan = _plan([moved, vanished], receipts, {100: b"\xcc" * 32})
    assert plan.reorged == [moved, vanished]


def test_a_lagging_node_is_no_evidence_of_a_reorg() -> None:
    """One answer from a node behind the mint's block (failover to a lagging node) must not
    send a mined mint back: no block at that height, or the block without the receipt."""
    behind, no_receipt = _mint("mined"), _mint("confirmed", block_number=90)
    receipts = {behind.tx_hash: _receipt(behind.tx_hash)}
    plan = _plan([behind, no_receipt], receipts, {100: None, 90: b"\xbb" * 32})
    assert plan.reorged == []
    assert (plan.confirm, plan.finalize) == ([], [])
    # A receipt in another block is a move, even when the old height still has our hash.
    moved = _mint("mined")
    elsewhere = {moved.tx_hash: _receipt(moved.tx_hash, block=101, block_hash=b"\xdd" * 32)}
    assert _plan([moved], elsewhere, {100: b"\xbb" * 32}).reorged == [moved]


def test_confirmations_then_finality() -> None:
    mint = _mint("mined")
    receipts = {mint.tx_hash: _receipt(mint.tx_hash)}
    canonical = {100: b"\xbb" * 32}
    waiting = _plan([mint], receipts, canonical, confirmations=2)
    assert (waiting.confirm, waiting.finalize) == ([], [])
    confirmed = _plan([mint], receipts, canonical, confirmations=1)
    assert (confirmed.confirm, confirmed.finalize) == ([mint.id], [])
    final_view = ChainView(head=200, finalized=100, mined_count=6, pending_count=6)
    final = _plan([mint], receipts, canonical, view=final_view, confirmations=64)
    assert (final.confirm, final.finalize) == ([mint.id], [mint.id])
