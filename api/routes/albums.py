"""`GET /albums`, `GET /albums/{album_id}`, `GET /artists/{artist_id}/albums`: the catalog with
tracks, artist and the NFT that carries each album (owner and provenance as indexed)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
from litestar import Controller, Request
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import Parameter

from api import params
from api.album_schemas import Album, AlbumNft, AlbumPage, AlbumStatus, ArtistRef, Track
from api.routes import read
from api.state import finality_of
from api.write_schemas import AlbumMetadata, TrackMetadata
from db import catalog_reads
from discograph.encoding import checksum_address, hex0x

LIST_PARAMS = frozenset({"limit", "cursor", "status"})
ARTIST_LIST_PARAMS = frozenset({"limit", "cursor"})
ONE_PARAMS: frozenset[str] = frozenset()
ALBUMS, ARTIST_ALBUMS = "albums", "artist-albums"  # cursor tags: a list takes only its own

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

LimitParam = Parameter(
    ge=1, le=params.MAX_LIMIT, description="Page size (1..200, default 50)", required=False
)
CursorParam = Parameter(description="Opaque cursor: `next_cursor` of the previous page")
StatusParam = Parameter(description="Only albums in this status")
UuidParam = Parameter(description="UUID")


def _cursor_of(row: asyncpg.Record, route: str) -> str:
    micros = (row["created_at"] - _EPOCH) // _MICROSECOND
    return params.encode_cursor(route, [micros, str(row["id"])])


def _decode_album_cursor(value: str | None, route: str) -> tuple[datetime, uuid.UUID] | None:
    key = params.decode_cursor(value, route, (int, str))
    if key is None:
        return None
    try:
        return _EPOCH + key[0] * _MICROSECOND, uuid.UUID(key[1])
    except (OverflowError, ValueError):
        raise params.invalid("cursor", "not a cursor this API issued", value) from None


def _nft(row: asyncpg.Record, view: asyncpg.Record | None) -> AlbumNft | None:
    if row["nft_contract"] is None:
        return None
    block = int(row["nft_block_number"])
    return AlbumNft(
        contract=checksum_address(bytes(row["nft_contract"])),
        token_id=str(int(row["nft_token_id"])),
        owner=checksum_address(bytes(row["nft_owner"])),
        token_uri=row["nft_token_uri"],
        block_number=block,
        block_hash=hex0x(bytes(row["nft_block_hash"])),
        finality=finality_of(block, view),
    )


async def assemble_albums(
    conn: asyncpg.Connection | asyncpg.Pool,
    rows: Sequence[asyncpg.Record],
    view: asyncpg.Record | None,
) -> list[Album]:
    """Assemble albums from their rows, with the tracks of all of them read in one query."""
    tracks: defaultdict[uuid.UUID, list[Track]] = defaultdict(list)
    for t in await catalog_reads.tracks_of(conn, [r["id"] for r in rows]):
        tracks[t["album_id"]].append(Track(t["position"], t["title"], t["duration_s"], t["isrc"]))
    return [
        Album(
            id=r["id"],
            title=r["title"],
            status=r["status"],
            metadata=msgspec.json.decode(r["metadata"]),
            created_at=r["created_at"],
            artist=ArtistRef(
                id=r["artist_id"],
                name=r["artist_name"],
                wallet=(
                    checksum_address(bytes(r["artist_wallet"]))
                    if r["artist_wallet"] is not None
                    else None
                ),
            ),
            tracks=tracks.get(r["id"], []),
            nft=_nft(r, view),
        )
        for r in rows
    ]


async def _page(
    request: Request[Any, Any, Any],
    *,
    limit: int | None,
    cursor: str | None,
    status: str | None = None,
    artist_id: uuid.UUID | None = None,
) -> AlbumPage:
    size = params.limit(limit)
    route = ALBUMS if artist_id is None else ARTIST_ALBUMS
    after = _decode_album_cursor(cursor, route)
    async with request.app.state.read_pool.acquire() as conn:
        if artist_id is not None and not await catalog_reads.artist_exists(conn, artist_id):
            raise NotFoundException(detail=f"artist {artist_id} not found")
        # One row more than the page tells whether there is a next page.
        rows = await catalog_reads.albums_page(
            conn, limit=size + 1, after=after, status=status, artist_id=artist_id
        )
        more = len(rows) > size
        rows = rows[:size]
        items = await assemble_albums(conn, rows, request.state.chain_view)
    return AlbumPage(items=items, next_cursor=_cursor_of(rows[-1], route) if more else None)


async def _album_row(
    request: Request[Any, Any, Any], album_id: str
) -> tuple[uuid.UUID, asyncpg.Record]:
    """The album of a `/albums/{album_id}…` route, or the 400 / 404 that says why not."""
    params.reject_unknown(request.query_params, ONE_PARAMS)
    key = params.album_id("album_id", album_id)
    row = await catalog_reads.album(request.app.state.read_pool, key)
    if row is None:
        raise NotFoundException(detail=f"album {key} not found")
    return key, row


class AlbumController(Controller):
    path = "/albums"
    tags = ["albums"]

    @read(
        "/",
        summary="Albums, newest first, with artist, tracks and the NFT that carries each",
        raises=[ValidationException],
    )
    async def list_albums(
        self,
        request: Request[Any, Any, Any],
        limit: int | None = LimitParam,
        cursor: str | None = CursorParam,
        status: AlbumStatus | None = StatusParam,
    ) -> AlbumPage:
        params.reject_unknown(request.query_params, LIST_PARAMS)
        return await _page(request, limit=limit, cursor=cursor, status=status)

    @read(
        "/{album_id:str}",
        summary="One album with artist, tracks and the NFT that carries it",
        raises=[ValidationException, NotFoundException],
    )
    async def get_album(
        self,
        request: Request[Any, Any, Any],
        album_id: str = UuidParam,
    ) -> Album:
        _, row = await _album_row(request, album_id)
        (album,) = await assemble_albums(
            request.app.state.read_pool, [row], request.state.chain_view
        )
        return album


class ArtistAlbumsController(Controller):
    path = "/artists"
    tags = ["albums"]

    @read(
        "/{artist_id:str}/albums",
        summary="An artist's albums, newest first",
        raises=[ValidationException, NotFoundException],
    )
    async def artist_albums(
        self,
        request: Request[Any, Any, Any],
        artist_id: str = UuidParam,
        limit: int | None = LimitParam,
        cursor: str | None = CursorParam,
    ) -> AlbumPage:
        params.reject_unknown(request.query_params, ARTIST_LIST_PARAMS)
        key = params.album_id("artist_id", artist_id)
        return await _page(request, limit=limit, cursor=cursor, artist_id=key)


class AlbumMetadataController(Controller):
    path = "/albums"
    tags = ["albums"]

    @read(
        "/{album_id:str}/metadata.json",
        summary="ERC-721 metadata JSON of an album (the default token URI of its NFT)",
        raises=[ValidationException, NotFoundException],
    )
    async def metadata(
        self, request: Request[Any, Any, Any], album_id: str = UuidParam
    ) -> AlbumMetadata:
        key, row = await _album_row(request, album_id)
        tracks = await catalog_reads.tracks_of(request.app.state.read_pool, [key])
        extra = msgspec.json.decode(row["metadata"])
        base = request.app.state.settings.public_base_url()
        description = extra.get("description") if isinstance(extra, dict) else None
        return AlbumMetadata(
            name=row["title"],
            description=str(description or f"{row['title']} by {row['artist_name']}"),
            external_url=f"{base}/albums/{key}",
            attributes=[
                TrackMetadata(trait_type=f"Track {t['position']}", value=t["title"]) for t in tracks
            ],
            properties={
                "album_id": str(key),
                "artist": {"id": str(row["artist_id"]), "name": row["artist_name"]},
                "tracks": [
                    {
                        "position": t["position"],
                        "title": t["title"],
                        "duration_s": t["duration_s"],
                        "isrc": t["isrc"],
                    }
                    for t in tracks
                ],
                "metadata": extra,
            },
        )
