"""Writes and reads of the off-chain catalog: artists, albums and their tracks."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec


@dataclass(frozen=True)
class NewTrack:
    position: int
    title: str
    duration_s: int | None = None
    isrc: str | None = None


@dataclass(frozen=True)
class NewAlbum:
    artist_id: uuid.UUID
    title: str
    tracks: Sequence[NewTrack] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    id: uuid.UUID = field(default_factory=uuid.uuid4)


async def insert_artist(
    conn: asyncpg.Connection, name: str, wallet: bytes | None, artist_id: uuid.UUID | None = None
) -> uuid.UUID:
    artist_id = artist_id or uuid.uuid4()
    await conn.execute(
        "INSERT INTO artists (id, name, wallet) VALUES ($1, $2, $3)", artist_id, name, wallet
    )
    return artist_id


async def insert_album(conn: asyncpg.Connection, album: NewAlbum) -> uuid.UUID:
    """Insert an album and all its tracks in one transaction (two statements)."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO albums (id, artist_id, title, metadata) VALUES ($1, $2, $3, $4::jsonb)",
            album.id,
            album.artist_id,
            album.title,
            msgspec.json.encode(album.metadata).decode(),
        )
        if album.tracks:
            await conn.copy_records_to_table(
                "tracks",
                records=[
                    (album.id, t.position, t.title, t.duration_s, t.isrc) for t in album.tracks
                ],
                columns=["album_id", "position", "title", "duration_s", "isrc"],
            )
    return album.id


async def set_album_status(conn: asyncpg.Connection, album_id: uuid.UUID, status: str) -> None:
    await conn.execute(
        "UPDATE albums SET status = $2, updated_at = now() WHERE id = $1", album_id, status
    )
