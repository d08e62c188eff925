"""Wire types of the album routes (msgspec structs; uint256 decimal strings, EIP-55 addresses)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import msgspec

from api.schemas import Address, BlockNumber, Cursor, Finality, Hash, TokenId

AlbumStatus = Literal["draft", "minting", "minted", "failed"]


class ArtistRef(msgspec.Struct, frozen=True):
    id: uuid.UUID
    name: str
    wallet: Address | None


class Track(msgspec.Struct, frozen=True):
    position: int
    title: str
    duration_s: int | None
    isrc: str | None


class AlbumNft(msgspec.Struct, frozen=True):
    """The token that carries the album, as indexed, with the provenance of its current state."""

    contract: Address
    token_id: TokenId
    owner: Address
    token_uri: str | None
    block_number: BlockNumber
    block_hash: Hash
    finality: Finality


class Album(msgspec.Struct, frozen=True):
    id: uuid.UUID
    title: str
    status: AlbumStatus
    metadata: dict[str, Any]
    created_at: datetime
    artist: ArtistRef
    tracks: list[Track]
    nft: AlbumNft | None


class AlbumPage(msgspec.Struct, frozen=True):
    items: list[Album]
    next_cursor: Cursor
