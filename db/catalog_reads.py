"""Read queries of the catalog for the API: albums (with artist and linked NFT) and their tracks.

Keyset pagination, newest first: `(created_at, id)` descending, served by the
`albums (created_at, id)` and `albums (artist_id, created_at, id)` indexes (no OFFSET).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg

# One row per album: the album, its artist and the NFT linked to it through `nfts.album_id`
# (the lowest (contract, token_id) if several tokens carry the album).
_ALBUM_SELECT = """
SELECT a.id, a.title, a.status, a.metadata::text AS metadata, a.created_at,
       ar.id AS artist_id, ar.name AS artist_name, ar.wallet AS artist_wallet,
       n.contract AS nft_contract, n.token_id AS nft_token_id, n.owner AS nft_owner,
       n.token_uri AS nft_token_uri, n.updated_block AS nft_block_number,
       n.updated_block_hash AS nft_block_hash
FROM albums a
JOIN artists ar ON ar.id = a.artist_id
LEFT JOIN LATERAL (
    SELECT contract, token_id, owner, token_uri, updated_block, updated_block_hash
    FROM nfts
    WHERE nfts.album_id = a.id
    ORDER BY contract, token_id
    LIMIT 1
) n ON true
"""

_PAGE_ORDER = " ORDER BY a.created_at DESC, a.id DESC"


async def album(
    conn: asyncpg.Connection | asyncpg.Pool, album_id: uuid.UUID
) -> asyncpg.Record | None:
    return await conn.fetchrow(_ALBUM_SELECT + " WHERE a.id = $1", album_id)


async def artist_exists(conn: asyncpg.Connection | asyncpg.Pool, artist_id: uuid.UUID) -> bool:
    return bool(
        await conn.fetchval("SELECT EXISTS (SELECT 1 FROM artists WHERE id = $1)", artist_id)
    )


async def albums_page(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None = None,
    status: str | None = None,
    artist_id: uuid.UUID | None = None,
) -> list[asyncpg.Record]:
    """Up to `limit` albums strictly after the keyset `after` (newest first), optionally filtered.

    The statement is assembled from fixed fragments (never from values), so each filter
    combination is its own prepared statement with a plan that uses the matching index.
    """
    conditions: list[str] = []
    args: list[object] = []
    if artist_id is not None:
        args.append(artist_id)
        conditions.append(f"a.artist_id = ${len(args)}")
    if status is not None:
        args.append(status)
        conditions.append(f"a.status = ${len(args)}")
    if after is not None:
        args.extend(after)
        conditions.append(f"(a.created_at, a.id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit)
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return list(await conn.fetch(f"{_ALBUM_SELECT}{where}{_PAGE_ORDER} LIMIT ${len(args)}", *args))


async def tracks_of(
    conn: asyncpg.Connection | asyncpg.Pool, album_ids: Sequence[uuid.UUID]
) -> list[asyncpg.Record]:
    """The tracks of all these albums in one statement, in (album, position) order."""
    if not album_ids:
        return []
    return list(
        await conn.fetch(
            "SELECT album_id, position, title, duration_s, isrc FROM tracks"
            " WHERE album_id = ANY($1::uuid[]) ORDER BY album_id, position",
            list(album_ids),
        )
    )
