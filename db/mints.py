"""Mint requests: the durable queue between the API (inserts, reads) and the minter (takes,
sends, tracks), and the `mint_status` events both announce on the feed."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from db.locks import MINT_QUEUED_CHANNEL
from db.outbox import append_outbox
from discograph.encoding import checksum_address, hex0x_or_none

MINT_COLUMNS = (
    "id, album_id, requester, to_address, token_uri, idempotency_key, status, remint,"
    " chain_id, contract, signer, nonce, tx_hash, block_number, block_hash, token_id, error,"
    " attempts,"
    " submitted_at, final_at, created_at, updated_at"
)

# A request that holds its album (the partial unique index `ux_mint_requests_one_live_per_album`
# says the same): any that is not a re-mint, unless it failed for good. A mint that reverted on
# chain is `failed` at once, but a reorg may still drop the revert and the transaction sent again
# may succeed, so it holds the album until its block is final (`final_at`).
HOLDS_ALBUM = "NOT remint AND (status <> 'failed' OR final_at IS NULL)"


async def insert_mint_request(
    conn: asyncpg.Connection,
    *,
    album_id: uuid.UUID,
    requester: str,
    to_address: bytes,
    token_uri: str,
    idempotency_key: str | None,
    remint: bool = False,
    chain_id: int | None = None,
) -> asyncpg.Record:
    """Queue a mint (inside the caller's transaction) and wake the minter at commit.

    Raises `asyncpg.UniqueViolationError` when the album already has a live mint (and this is
    not a re-mint): the database decides, so concurrent requests cannot both pass."""
    row = await conn.fetchrow(
        "INSERT INTO mint_requests"
        " (id, album_id, requester, to_address, token_uri, idempotency_key, remint, chain_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        f" RETURNING {MINT_COLUMNS}",
        uuid.uuid4(),
        album_id,
        requester,
        to_address,
        token_uri,
        idempotency_key,
        remint,
        chain_id,
    )
    assert row is not None
    await conn.execute("SELECT pg_notify($1, $2)", MINT_QUEUED_CHANNEL, str(row["id"]))
    return row


async def get_mint(conn: asyncpg.Connection | asyncpg.Pool, mint_id: uuid.UUID) -> Any:
    return await conn.fetchrow(f"SELECT {MINT_COLUMNS} FROM mint_requests WHERE id = $1", mint_id)


def mint_status_message(row: asyncpg.Record, chain_id: int) -> dict[str, Any]:
    """The feed's `mint_status` event of a mint request row (its current status)."""
    return {
        "type": "mint_status",
        "chain_id": chain_id,
        "mint_id": str(row["id"]),
        "album_id": str(row["album_id"]),
        "status": row["status"],
        "requester": row["requester"],
        "to": checksum_address(row["to_address"]),
        "contract": checksum_address(row["contract"]) if row["contract"] is not None else None,
        "nonce": row["nonce"],
        "tx_hash": hex0x_or_none(row["tx_hash"]),
        "block_number": row["block_number"],
        "block_hash": hex0x_or_none(row["block_hash"]),
        "token_id": str(row["token_id"]) if row["token_id"] is not None else None,
        "error": row["error"],
    }


async def announce_mint(conn: asyncpg.Connection, chain_id: int, row: asyncpg.Record) -> None:
    """Append the row's current status to the outbox (inside the caller's transaction)."""
    await append_outbox(conn, chain_id, [mint_status_message(row, chain_id)])


async def mint_history(conn: asyncpg.Connection | asyncpg.Pool, mint_id: uuid.UUID) -> list[Any]:
    """The request's `mint_status` events, oldest first: (status, tx_hash, block_number, at)."""
    return list(
        await conn.fetch(
            "SELECT payload->>'status' AS status, payload->>'tx_hash' AS tx_hash,"
            " (payload->>'block_number')::bigint AS block_number, created_at AS at"
            " FROM outbox WHERE kind = 'mint_status' AND payload->>'mint_id' = $1"
            " ORDER BY seq",
            str(mint_id),
        )
    )
