"""Status changes of mint requests: one set-based statement per kind, announced in the same
transaction.

Every function runs inside the caller's transaction, changes only rows still in the status it
expects (a row that moved meanwhile is left alone), appends one `mint_status` outbox event per
changed row (`db.mints.mint_status_message`, the event `announce_mint` writes) and returns the
changed rows with their previous status in `previous`, in nonce order.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from db.mints import MINT_COLUMNS, mint_status_message
from db.outbox import append_outbox
from minter.fees import Fees

OPEN_STATUSES = ("submitted", "mined", "confirmed")
# A mint that reverted on chain: `failed`, but followed until its block is final, since a reorg
# may drop the revert and the same transaction, sent again, may then succeed.
UNSETTLED_FAILURE = "status = 'failed' AND final_at IS NULL AND block_hash IS NOT NULL"


@dataclass(frozen=True)
class SignedTx:
    """A signed mint transaction, recorded (mint_txs) before it is ever broadcast."""

    mint_id: uuid.UUID
    nonce: int
    tx_hash: bytes
    raw_tx: bytes
    fees: Fees
    gas: int


@dataclass(frozen=True)
class Failure:
    mint_id: uuid.UUID
    previous: str
    error: str
    tx_hash: bytes | None = None
    block_number: int | None = None
    block_hash: bytes | None = None


@dataclass(frozen=True)
class Mined:
    mint_id: uuid.UUID
    tx_hash: bytes
    block_number: int
    block_hash: bytes
    token_id: int | None


async def _announced(conn: asyncpg.Connection, chain_id: int, sql: str, *args: Any) -> list[Any]:
    rows = sorted(await conn.fetch(sql, *args), key=lambda r: (r["nonce"] or 0, str(r["id"])))
    await append_outbox(conn, chain_id, [mint_status_message(row, chain_id) for row in rows])
    return rows


async def lock_albums(conn: asyncpg.Connection, album_ids: Sequence[uuid.UUID]) -> None:
    """Lock the albums a transaction will update before it touches any mint row.

    Every writer takes its locks in the same order: albums, then mint rows, then the outbox
    lock (the API locks the album, inserts the mint, announces it; the indexer updates albums,
    then announces). The other order deadlocks against an API request queueing a mint of the
    same album while this transaction fails or finalizes its previous one."""
    if album_ids:
        await conn.execute(
            "SELECT 1 FROM albums WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE",
            sorted(set(album_ids), key=str),
        )


async def take_queued(conn: asyncpg.Connection, limit: int) -> list[Any]:
    """Lock up to `limit` queued requests, oldest first; others' locked rows are skipped."""
    return list(
        await conn.fetch(
            "SELECT id, album_id, to_address, token_uri FROM mint_requests"
            " WHERE status = 'queued' ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED",
            limit,
        )
    )


async def _insert_txs(conn: asyncpg.Connection, txs: Sequence[SignedTx]) -> None:
    await conn.execute(
        """
        INSERT INTO mint_txs
            (tx_hash, mint_id, nonce, raw_tx, max_fee_per_gas, max_priority_fee_per_gas, gas_limit)
        SELECT * FROM unnest($1::bytea[], $2::uuid[], $3::bigint[], $4::bytea[], $5::numeric[],
                             $6::numeric[], $7::bigint[])
        """,
        [t.tx_hash for t in txs],
        [t.mint_id for t in txs],
        [t.nonce for t in txs],
        [t.raw_tx for t in txs],
        [t.fees.max_fee for t in txs],
        [t.fees.priority for t in txs],
        [t.gas for t in txs],
    )


async def record_sent(
    conn: asyncpg.Connection,
    chain_id: int,
    contract: bytes,
    signer: bytes,
    txs: Sequence[SignedTx],
) -> list[Any]:
    """queued → submitted: the signed transactions, their nonces and hashes in force."""
    await _insert_txs(conn, txs)
    rows = await _announced(
        conn,
        chain_id,
        f"""
        UPDATE mint_requests m
        SET status = 'submitted', contract = $1, signer = $2, nonce = u.new_nonce,
            tx_hash = u.new_hash, attempts = m.attempts + 1, submitted_at = now(),
            updated_at = now(), error = NULL, chain_id = $6
        FROM unnest($3::uuid[], $4::bigint[], $5::bytea[]) AS u(mint_id, new_nonce, new_hash)
        WHERE m.id = u.mint_id AND m.status = 'queued'
        RETURNING 'queued' AS previous, {MINT_COLUMNS}
        """,
        contract,
        signer,
        [t.mint_id for t in txs],
        [t.nonce for t in txs],
        [t.tx_hash for t in txs],
        chain_id,
    )
    await conn.execute(
        "UPDATE albums SET status = 'minting', updated_at = now()"
        " WHERE id = ANY($1::uuid[]) AND status IN ('draft', 'failed')",
        [row["album_id"] for row in rows],
    )
    return rows


async def record_replacements(
    conn: asyncpg.Connection, chain_id: int, txs: Sequence[SignedTx]
) -> list[Any]:
    """A fee-bumped variant (same nonce) becomes the transaction in force of a submitted mint;
    announced too, so the feed shows the new hash."""
    await _insert_txs(conn, txs)
    return await _announced(
        conn,
        chain_id,
        f"""
        UPDATE mint_requests m
        SET tx_hash = u.new_hash, attempts = m.attempts + 1, updated_at = now()
        FROM unnest($1::uuid[], $2::bytea[], $3::bigint[]) AS u(mint_id, new_hash, same_nonce)
        WHERE m.id = u.mint_id AND m.status = 'submitted' AND m.nonce = u.same_nonce
        RETURNING 'submitted' AS previous, {MINT_COLUMNS}
        """,
        [t.mint_id for t in txs],
        [t.tx_hash for t in txs],
        [t.nonce for t in txs],
    )


async def record_failures(
    conn: asyncpg.Connection, chain_id: int, failures: Sequence[Failure]
) -> list[Any]:
    """→ failed, with the reason (and the reverted transaction's block, if it was mined).

    A failure without a block (the estimate reverted, or another transaction took the nonce) is
    final at once. A revert on chain is final only once its block is (`record_settled`): until
    then a reorg may still move it (`record_reorged`), and it keeps holding its album.
    The album becomes `failed` too, unless it is minted or has another live mint."""
    rows = await _announced(
        conn,
        chain_id,
        f"""
        UPDATE mint_requests m
        SET status = 'failed', error = u.reason, tx_hash = coalesce(u.failed_tx, m.tx_hash),
            block_number = u.failed_block, block_hash = u.failed_block_hash,
            final_at = CASE WHEN u.failed_block IS NULL THEN now() END, updated_at = now()
        FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::bigint[], $6::bytea[])
             AS u(mint_id, prev, reason, failed_tx, failed_block, failed_block_hash)
        WHERE m.id = u.mint_id AND m.status = u.prev
        RETURNING u.prev AS previous, {MINT_COLUMNS}
        """,
        [f.mint_id for f in failures],
        [f.previous for f in failures],
        [f.error for f in failures],
        [f.tx_hash for f in failures],
        [f.block_number for f in failures],
        [f.block_hash for f in failures],
    )
    await conn.execute(
        """
        UPDATE albums a SET status = 'failed', updated_at = now()
        WHERE a.id = ANY($1::uuid[]) AND a.status NOT IN ('minted', 'failed')
          AND NOT EXISTS (SELECT 1 FROM mint_requests o
                          WHERE o.album_id = a.id AND o.status <> 'failed')
        """,
        [row["album_id"] for row in rows],
    )
    return rows


async def record_mined(
    conn: asyncpg.Connection, chain_id: int, mined: Sequence[Mined]
) -> list[Any]:
    """submitted → mined: the transaction that was mined (the original or a replacement)."""
    return await _announced(
        conn,
        chain_id,
        f"""
        UPDATE mint_requests m
        SET status = 'mined', tx_hash = u.mined_tx, block_number = u.mined_block,
            block_hash = u.mined_block_hash, token_id = u.minted_token, updated_at = now()
        FROM unnest($1::uuid[], $2::bytea[], $3::bigint[], $4::bytea[], $5::numeric[])
             AS u(mint_id, mined_tx, mined_block, mined_block_hash, minted_token)
        WHERE m.id = u.mint_id AND m.status = 'submitted'
        RETURNING 'submitted' AS previous, {MINT_COLUMNS}
        """,
        [m.mint_id for m in mined],
        [m.tx_hash for m in mined],
        [m.block_number for m in mined],
        [m.block_hash for m in mined],
        [m.token_id for m in mined],
    )


async def record_reorged(
    conn: asyncpg.Connection, chain_id: int, reorged: Sequence[tuple[uuid.UUID, str]]
) -> list[Any]:
    """mined/confirmed/failed → submitted: a reorg dropped the block of the mined (or reverted)
    transaction; the same tx is sent again, and the next receipt decides.

    Only a failure that is not final moves; its error is cleared, and its album, `failed`
    because of it, is `minting` again."""
    rows = await _announced(
        conn,
        chain_id,
        f"""
        UPDATE mint_requests m
        SET status = 'submitted', block_number = NULL, block_hash = NULL, token_id = NULL,
            error = NULL, updated_at = now()
        FROM unnest($1::uuid[], $2::text[]) AS u(mint_id, prev)
        WHERE m.id = u.mint_id AND m.status = u.prev
          AND (m.status <> 'failed' OR m.final_at IS NULL)
        RETURNING u.prev AS previous, {MINT_COLUMNS}
        """,
        [mint_id for mint_id, _ in reorged],
        [previous for _, previous in reorged],
    )
    await conn.execute(
        "UPDATE albums SET status = 'minting', updated_at = now()"
        " WHERE id = ANY($1::uuid[]) AND status = 'failed'",
        [row["album_id"] for row in rows if row["previous"] == "failed"],
    )
    return rows


async def record_settled(conn: asyncpg.Connection, mint_ids: Sequence[uuid.UUID]) -> list[Any]:
    """A revert whose block is now final: the failure is final too (`final_at`), and frees its
    album for another request. Not a status change, so nothing is announced.

    An album still `minting` with no other request that holds it becomes `failed`: when a reorg
    turned a success into this revert, the indexer set the album back from `minted` to
    `minting` after `record_failures` had left it alone."""
    rows = list(
        await conn.fetch(
            f"""
            UPDATE mint_requests SET final_at = now(), updated_at = now()
            WHERE id = ANY($1::uuid[]) AND {UNSETTLED_FAILURE}
            RETURNING 'failed' AS previous, {MINT_COLUMNS}
            """,
            list(mint_ids),
        )
    )
    await conn.execute(
        """
        UPDATE albums a SET status = 'failed', updated_at = now()
        WHERE a.id = ANY($1::uuid[]) AND a.status = 'minting'
          AND NOT EXISTS (SELECT 1 FROM mint_requests o
                          WHERE o.album_id = a.id
                            AND (o.status <> 'failed' OR o.final_at IS NULL))
        """,
        [row["album_id"] for row in rows],
    )
    return rows


async def record_advanced(
    conn: asyncpg.Connection,
    chain_id: int,
    mint_ids: Sequence[uuid.UUID],
    previous: str,
    status: str,
) -> list[Any]:
    """mined → confirmed or confirmed → finalized (the album is then `minted`)."""
    rows = await _announced(
        conn,
        chain_id,
        f"""
        UPDATE mint_requests
        SET status = $3, updated_at = now(),
            final_at = CASE WHEN $3 = 'finalized' THEN now() ELSE final_at END
        WHERE id = ANY($1::uuid[]) AND status = $2
        RETURNING $2 AS previous, {MINT_COLUMNS}
        """,
        list(mint_ids),
        previous,
        status,
    )
    if status == "finalized":
        await conn.execute(
            "UPDATE albums SET status = 'minted', updated_at = now()"
            " WHERE id = ANY($1::uuid[]) AND status <> 'minted'",
            [row["album_id"] for row in rows],
        )
    return rows


async def open_mints(conn: asyncpg.Connection, signer: bytes) -> list[Any]:
    """The signer's mints not final yet (sent ones, and reverts whose block is not final), with
    every recorded tx hash, the tx in force's fees and how long since the row last changed (the
    database's clock)."""
    return list(
        await conn.fetch(
            """
            SELECT m.id, m.status, m.album_id, m.to_address, m.token_uri, m.contract, m.nonce,
                   m.tx_hash, m.block_number, m.block_hash,
                   extract(epoch FROM now() - m.updated_at)::float8 AS idle_seconds,
                   f.raw_tx, f.max_fee_per_gas, f.max_priority_fee_per_gas, f.gas_limit,
                   (SELECT array_agg(t.tx_hash ORDER BY t.created_at)
                    FROM mint_txs t WHERE t.mint_id = m.id) AS hashes
            FROM mint_requests m JOIN mint_txs f ON f.tx_hash = m.tx_hash
            WHERE m.signer = $1
              AND (m.status = ANY($2::text[])
                   OR (m.status = 'failed' AND m.final_at IS NULL AND m.block_hash IS NOT NULL))
            ORDER BY m.nonce
            """,
            signer,
            list(OPEN_STATUSES),
        )
    )


async def recorded_from(conn: asyncpg.Connection, signer: bytes, first_nonce: int) -> list[Any]:
    """(nonce, raw tx in force) of the signer's recorded transactions from `first_nonce` on,
    in nonce order: what to send again when the node's pending count is behind ours."""
    return list(
        await conn.fetch(
            """
            SELECT m.nonce, t.raw_tx FROM mint_requests m JOIN mint_txs t ON t.tx_hash = m.tx_hash
            WHERE m.signer = $1 AND m.nonce >= $2 AND m.status <> 'queued'
            ORDER BY m.nonce
            """,
            signer,
            first_nonce,
        )
    )
