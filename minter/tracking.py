"""Where each sent mint stands, decided from plain values (no I/O): mined, reverted, dropped by
a reorg, confirmed, finalized, or due for a fee-bumped replacement; and whether a revert is
final, or was dropped by a reorg and must be sent again."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chain.abi import event_topic, load_artifact
from minter.fees import Fees
from minter.node import ChainView
from minter.transitions import Mined

ALBUM_MINTED_TOPIC = event_topic(load_artifact("AlbumNFT").event("AlbumMinted"))


@dataclass(frozen=True)
class OpenMint:
    """A mint that was sent and is not final, with its transaction in force: `submitted`,
    `mined`, `confirmed`, or `failed` by a revert whose block is not final yet."""

    id: uuid.UUID
    status: str
    album_id: uuid.UUID
    to_address: bytes
    token_uri: str
    contract: bytes
    nonce: int
    tx_hash: bytes
    block_number: int | None
    block_hash: bytes | None
    idle_seconds: float
    raw_tx: bytes
    fees: Fees
    gas: int
    hashes: tuple[bytes, ...]

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> OpenMint:
        return cls(
            id=row["id"],
            status=row["status"],
            album_id=row["album_id"],
            to_address=bytes(row["to_address"]),
            token_uri=row["token_uri"],
            contract=bytes(row["contract"]),
            nonce=int(row["nonce"]),
            tx_hash=bytes(row["tx_hash"]),
            block_number=row["block_number"],
            block_hash=None if row["block_hash"] is None else bytes(row["block_hash"]),
            idle_seconds=float(row["idle_seconds"]),
            raw_tx=bytes(row["raw_tx"]),
            fees=Fees(int(row["max_fee_per_gas"]), int(row["max_priority_fee_per_gas"])),
            gas=int(row["gas_limit"]),
            hashes=tuple(bytes(h) for h in row["hashes"] or ()),
        )


@dataclass
class Plan:
    """What one tracking pass does."""

    mined: list[Mined] = field(default_factory=list)
    reverted: list[tuple[OpenMint, Mined]] = field(default_factory=list)
    reorged: list[OpenMint] = field(default_factory=list)
    confirm: list[uuid.UUID] = field(default_factory=list)
    # Reverts whose block is now final (and still canonical): the failure is final.
    settle: list[uuid.UUID] = field(default_factory=list)
    finalize: list[uuid.UUID] = field(default_factory=list)
    replace: list[OpenMint] = field(default_factory=list)
    # No receipt for any of its transactions although the node counts its nonce as used.
    nonce_used: list[OpenMint] = field(default_factory=list)


def token_id_of(receipt: Mapping[str, Any], contract: bytes) -> int | None:
    """The token id of the receipt's AlbumMinted log emitted by `contract`."""
    address = "0x" + contract.hex()
    for entry in receipt.get("logs") or ():
        topics: Sequence[str] = entry.get("topics") or ()
        if (
            str(entry.get("address", "")).lower() == address
            and len(topics) > 1
            and str(topics[0]).lower() == ALBUM_MINTED_TOPIC
        ):
            return int(topics[1], 16)
    return None


def _as_mined(mint: OpenMint, receipt: Mapping[str, Any]) -> Mined:
    return Mined(
        mint_id=mint.id,
        tx_hash=bytes.fromhex(str(receipt["transactionHash"])[2:]),
        block_number=int(receipt["blockNumber"], 16),
        block_hash=bytes.fromhex(str(receipt["blockHash"])[2:]),
        token_id=token_id_of(receipt, mint.contract),
    )


def _plan_submitted(
    mint: OpenMint,
    receipts: Mapping[bytes, Mapping[str, Any]],
    view: ChainView,
    replace_after: float,
    plan: Plan,
) -> None:
    # Any of its transactions may be the mined one: the original or a replacement.
    receipt = next((receipts[h] for h in mint.hashes if h in receipts), None)
    if receipt is not None:
        mined = _as_mined(mint, receipt)
        if int(receipt["status"], 16) == 1:
            plan.mined.append(mined)
        else:
            plan.reverted.append((mint, mined))
    elif mint.nonce < view.mined_count:
        plan.nonce_used.append(mint)
    elif mint.idle_seconds >= replace_after:
        plan.replace.append(mint)


def _plan_included(
    mint: OpenMint,
    receipts: Mapping[bytes, Mapping[str, Any]],
    canonical: Mapping[int, bytes | None],
    view: ChainView,
    confirmations: int,
    plan: Plan,
) -> None:
    assert mint.block_number is not None
    canonical_hash = canonical.get(mint.block_number)
    if canonical_hash is None:
        # The node that answered has no block at that height (one lagging behind a balancer,
        # or a reorg to a shorter chain): no evidence either way, decide on a later pass.
        return
    receipt = receipts.get(mint.tx_hash)
    moved = receipt is not None and bytes.fromhex(str(receipt["blockHash"])[2:]) != mint.block_hash
    if canonical_hash != mint.block_hash or moved:
        plan.reorged.append(mint)  # another block holds that height, or the tx moved
        return
    if receipt is None:
        return  # the block is ours but this answer lacks the receipt: ask again next pass
    finalized = mint.block_number <= view.finalized
    if mint.status == "failed":
        if finalized:
            plan.settle.append(mint.id)
        return
    confirmed = view.head - mint.block_number + 1 >= confirmations
    if mint.status == "mined" and (confirmed or finalized):
        plan.confirm.append(mint.id)
    if finalized:
        plan.finalize.append(mint.id)


def plan_tracking(
    mints: Sequence[OpenMint],
    receipts: Mapping[bytes, Mapping[str, Any]],
    canonical: Mapping[int, bytes | None],
    view: ChainView,
    *,
    confirmations: int,
    replace_after: float,
) -> Plan:
    """Decide every open mint's next step from the node's receipts (by tx hash), the canonical
    hashes of the blocks we stored (by number) and the chain view.

    A just-mined mint is only marked `mined` here; its block is checked against the canonical
    chain on the next pass before it is confirmed or finalized. A revert (`failed` with a block)
    is followed the same way: a reorg that drops its block sends it back to `submitted` (the
    transaction sent again may succeed on the new branch); once its block is final, so is the
    failure.
    """
    plan = Plan()
    for mint in mints:
        if mint.status == "submitted":
            _plan_submitted(mint, receipts, view, replace_after, plan)
        else:
            _plan_included(mint, receipts, canonical, view, confirmations, plan)
    return plan


def hashes_to_check(mints: Sequence[OpenMint]) -> list[bytes]:
    """Receipts to fetch: every variant of a submitted mint, the mined one of the others."""
    hashes: list[bytes] = []
    for mint in mints:
        hashes.extend(mint.hashes if mint.status == "submitted" else (mint.tx_hash,))
    return hashes


def blocks_to_check(mints: Sequence[OpenMint]) -> list[int]:
    return [m.block_number for m in mints if m.status != "submitted" and m.block_number is not None]
