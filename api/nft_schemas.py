"""Wire types of the NFT, owner, transfer and holder reads (msgspec structs).

uint256 as decimal strings, addresses EIP-55, hashes 0x-prefixed lowercase hex. Every NFT and
transfer item carries its provenance: `block_number`, `block_hash` and `finality`.
"""

from __future__ import annotations

import msgspec

from api.schemas import Address, BlockNumber, Cursor, Finality, Hash, TokenId


class LastTransfer(msgspec.Struct, frozen=True, kw_only=True):
    block_number: BlockNumber
    tx_hash: Hash
    from_: Address = msgspec.field(name="from")
    to: Address


class Nft(msgspec.Struct, frozen=True):
    chain_id: int
    contract: Address
    token_id: TokenId
    owner: Address
    album_id: str | None
    token_uri: str | None
    minted_block: BlockNumber
    minted_tx: Hash
    last_transfer: LastTransfer | None
    block_number: BlockNumber
    block_hash: Hash
    finality: Finality


class Transfer(msgspec.Struct, frozen=True, kw_only=True):
    chain_id: int
    contract: Address
    token_id: TokenId
    from_: Address = msgspec.field(name="from")
    to: Address
    tx_hash: Hash
    log_index: int
    block_number: BlockNumber
    block_hash: Hash
    finality: Finality


class Holder(msgspec.Struct, frozen=True):
    owner: Address
    count: int


class NftPage(msgspec.Struct, frozen=True):
    items: list[Nft]
    next_cursor: Cursor


class TransferPage(msgspec.Struct, frozen=True):
    items: list[Transfer]
    next_cursor: Cursor


class HolderPage(msgspec.Struct, frozen=True):
    items: list[Holder]
    next_cursor: Cursor
