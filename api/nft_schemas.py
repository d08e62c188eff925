"""Wire types of the NFT, owner, transfer and holder reads (msgspec structs).

uint256 as decimal strings, addresses EIP-55, hashes 0x-prefixed lowercase hex. Every NFT and
transfer item carries its provenance: `block_number`, `block_hash` and `finality`.
"""

from __future__ import annotations

import msgspec

from api.schemas import Finality


class LastTransfer(msgspec.Struct, frozen=True, kw_only=True):
    block_number: int
    tx_hash: str
    from_: str = msgspec.field(name="from")
    to: str


class Nft(msgspec.Struct, frozen=True):
    chain_id: int
    contract: str
    token_id: str
    owner: str
    album_id: str | None
    token_uri: str | None
    minted_block: int
    minted_tx: str
    last_transfer: LastTransfer | None
    block_number: int
    block_hash: str
    finality: Finality


class Transfer(msgspec.Struct, frozen=True, kw_only=True):
    chain_id: int
    contract: str
    token_id: str
    from_: str = msgspec.field(name="from")
    to: str
    tx_hash: str
    log_index: int
    block_number: int
    block_hash: str
    finality: Finality


class Holder(msgspec.Struct, frozen=True):
    owner: str
    count: int


class NftPage(msgspec.Struct, frozen=True):
    items: list[Nft]
    next_cursor: str | None


class TransferPage(msgspec.Struct, frozen=True):
    items: list[Transfer]
    next_cursor: str | None


class HolderPage(msgspec.Struct, frozen=True):
    items: list[Holder]
    next_cursor: str | None
