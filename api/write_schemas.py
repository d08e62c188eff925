"""Bodies and answers of the write routes (msgspec structs: Litestar validates bodies with them,
and a bad field is a 400 naming it). Text fields are further checked by `api.writes_validation`
(control characters, lone surrogates, ISRC shape, URI schemes)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from api.schemas import Address, BlockNumber, Hash, TokenId

MintStatus = Literal["queued", "submitted", "mined", "confirmed", "finalized", "failed"]

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, examples=["Nina Simone"])]
Title = Annotated[str, msgspec.Meta(min_length=1, max_length=200, examples=["Pastel Blues"])]
Position = Annotated[int, msgspec.Meta(ge=1, le=100, description="1-based track position")]
Duration = Annotated[
    int, msgspec.Meta(gt=0, le=86_400, description="Track length in seconds", examples=[214])
]
Isrc = Annotated[
    str,
    msgspec.Meta(
        min_length=12,
        max_length=15,
        description="ISRC: CC-XXX-YY-NNNNN (hyphens optional)",
        examples=["USRC17607839"],
    ),
]
TokenUri = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=2048,
        description="Token URI: https://, http://, ipfs:// or ar://",
        examples=["ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"],
    ),
]
AddressIn = Annotated[
    str,
    msgspec.Meta(
        description="0x address: one case, or mixed case with a valid EIP-55 checksum",
        examples=["0x70997970C51812dc3A010C7d01b50e0d17dc79C8"],
    ),
]


class NewArtist(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Name
    wallet: AddressIn | None = None


class Artist(msgspec.Struct, frozen=True):
    id: uuid.UUID
    name: str
    wallet: Address | None


class NewTrack(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    title: Title
    position: Position | None = None
    duration_s: Duration | None = None
    isrc: Isrc | None = None


class NewAlbum(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    title: Title
    tracks: Annotated[list[NewTrack], msgspec.Meta(min_length=1, max_length=100)]
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    artist_id: uuid.UUID | None = msgspec.field(
        default=None
    )  # admins say whose album it is; artists create their own


class MintOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    to: AddressIn | None = None
    token_uri: TokenUri | None = None
    remint: bool = False


class NewAlbumMint(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`POST /albums/mint`: the album and its mint in one call."""

    title: Title
    tracks: Annotated[list[NewTrack], msgspec.Meta(min_length=1, max_length=100)]
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    artist_id: uuid.UUID | None = None
    to: AddressIn | None = None
    token_uri: TokenUri | None = None


class MintAccepted(msgspec.Struct, frozen=True):
    mint_id: uuid.UUID
    status: MintStatus
    album_id: uuid.UUID


class MintEvent(msgspec.Struct, frozen=True):
    """One step of a mint request's lifecycle, as announced on the feed."""

    status: MintStatus
    at: datetime
    tx_hash: Hash | None
    block_number: BlockNumber | None


class Mint(msgspec.Struct, frozen=True):
    id: uuid.UUID
    album_id: uuid.UUID
    status: MintStatus
    to: Address
    token_uri: str
    remint: bool
    contract: Address | None
    nonce: int | None
    tx_hash: Hash | None
    block_number: BlockNumber | None
    block_hash: Hash | None
    token_id: TokenId | None
    error: str | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    history: list[MintEvent] = msgspec.field(default_factory=list)


class TrackMetadata(msgspec.Struct, frozen=True):
    trait_type: str
    value: str


class AlbumMetadata(msgspec.Struct, frozen=True):
    """ERC-721 metadata JSON of an album (the default token URI points here)."""

    name: str
    description: str
    external_url: str
    attributes: list[TrackMetadata]
    properties: dict[str, Any]
