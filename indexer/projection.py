"""Apply a batch of decoded events to Postgres, or undo blocks after a reorg: set-based SQL.

Each function runs a fixed, small number of statements for the whole batch (COPY, then one
`unnest` statement per table) inside the caller's transaction: the caller commits rows, the
block window, the checkpoint and the outbox together, or nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from db.locks import CHECKPOINT_CHANNEL
from db.outbox import append_outbox
from discograph.encoding import checksum_address
from indexer.decode import TokenEvent, Transfer
from indexer.source import Header

TRANSFER_COLUMNS = list(Transfer._fields)
TOKEN_EVENT_COLUMNS = list(TokenEvent._fields)


@dataclass
class Batch:
    """Everything one transaction commits: blocks `first..last.number` of one chain."""

    chain_id: int
    first: int
    last: Header
    transfers: list[Transfer]
    token_events: list[TokenEvent]
    # Headers stored in the reorg window (every block at the tip; the last one in backfill).
    window: list[Header] = field(default_factory=list)
    head: int | None = None
    safe: int | None = None
    finalized: int | None = None
    # Tip batches are announced on the feed (outbox); backfilled history is not.
    announce: bool = False

    @property
    def events(self) -> int:
        return len(self.transfers) + len(self.token_events)


class StaleBatch(Exception):
    """The checkpoint is not where this batch starts (a batch before it did not commit)."""


async def write_history(conn: asyncpg.Connection, batch: Batch) -> None:
    """The append-only part of a batch (COPY of events). It does not depend on other
    batches, so two consecutive batches may run this part at the same time."""
    if batch.transfers:
        await conn.copy_records_to_table(
            "transfers", records=batch.transfers, columns=TRANSFER_COLUMNS
        )
    if batch.token_events:
        await conn.copy_records_to_table(
            "token_events", records=batch.token_events, columns=TOKEN_EVENT_COLUMNS
        )


async def write_state(conn: asyncpg.Connection, batch: Batch, prune_below: int) -> int:
    """The ordered part: checkpoint first (its row lock orders batches: a batch can only
    commit right after the one before it), then owners, album links, window and outbox.
    Returns the number of outbox rows appended."""
    previous_finalized = await _advance_checkpoint(conn, batch)
    if batch.transfers:
        await _upsert_owners(conn, batch.chain_id, batch.transfers)
    if batch.token_events:
        await _apply_token_events(conn, batch.chain_id, batch.token_events)
    await _store_window(conn, batch, prune_below)
    announced = 0
    if batch.announce and batch.events:
        announced = await _announce(conn, batch)
    if batch.announce:
        announced += await _announce_finality(conn, batch, previous_finalized)
    return announced


_OWNER_STAGE_COLUMNS = [
    "contract",
    "token_id",
    "owner",
    "minted_block",
    "minted_tx",
    "block_number",
    "block_hash",
    "log_index",
    "tx_hash",
    "from_address",
]


async def _upsert_owners(
    conn: asyncpg.Connection, chain_id: int, transfers: list[Transfer]
) -> None:
    """The last transfer of each token in the batch sets its owner; the first one, if the
    token is new, its mint block. Staged with COPY (array parameters cost far more to encode),
    then one INSERT … ON CONFLICT."""
    last: dict[tuple[bytes, int], Transfer] = {}
    first: dict[tuple[bytes, int], Transfer] = {}
    for transfer in transfers:
        key = (transfer.contract, transfer.token_id)
        if key not in first:
            first[key] = transfer
        last[key] = transfer
    await conn.execute(
        """
        CREATE TEMP TABLE IF NOT EXISTS owner_stage (
            contract bytea, token_id numeric(78, 0), owner bytea, minted_block bigint,
            minted_tx bytea, block_number bigint, block_hash bytea, log_index int,
            tx_hash bytea, from_address bytea
        ) ON COMMIT DELETE ROWS
        """
    )
    await conn.copy_records_to_table(
        "owner_stage",
        records=[
            (
                t.contract,
                t.token_id,
                t.to_address,
                first[key].block_number,
                first[key].tx_hash,
                t.block_number,
                t.block_hash,
                t.log_index,
                t.tx_hash,
                t.from_address,
            )
            for key, t in last.items()
        ],
        columns=_OWNER_STAGE_COLUMNS,
    )
    await conn.execute(
        """
        INSERT INTO nfts AS n (chain_id, contract, token_id, owner, minted_block, minted_tx,
                               updated_block, updated_block_hash, updated_log_index,
                               last_transfer_block, last_transfer_tx, last_transfer_from)
        SELECT $1, s.contract, s.token_id, s.owner, s.minted_block, s.minted_tx,
               s.block_number, s.block_hash, s.log_index,
               s.block_number, s.tx_hash, s.from_address
        FROM owner_stage s
        ON CONFLICT (chain_id, contract, token_id) DO UPDATE SET
            owner = EXCLUDED.owner,
            updated_block = EXCLUDED.updated_block,
            updated_block_hash = EXCLUDED.updated_block_hash,
            updated_log_index = EXCLUDED.updated_log_index,
            last_transfer_block = EXCLUDED.last_transfer_block,
            last_transfer_tx = EXCLUDED.last_transfer_tx,
            last_transfer_from = EXCLUDED.last_transfer_from
        """,
        chain_id,
    )


async def _apply_token_events(
    conn: asyncpg.Connection, chain_id: int, events: list[TokenEvent]
) -> None:
    """Album links and URIs: per token, the last album link and the last known URI win."""
    latest: dict[tuple[bytes, int], list[Any]] = {}
    for event in events:
        key = (event.contract, event.token_id)
        row = latest.setdefault(key, [event.contract, str(event.token_id), None, None, 0, b"", 0])
        if event.album_id is not None:
            row[2] = event.album_id
        if event.token_uri is not None:
            row[3] = event.token_uri
        row[4], row[5], row[6] = event.block_number, event.block_hash, event.log_index
    rows = list(latest.values())
    await conn.execute(
        """
        UPDATE nfts AS n SET
            album_id = COALESCE(u.album_id, n.album_id),
            token_uri = COALESCE(u.token_uri, n.token_uri),
            updated_block = GREATEST(n.updated_block, u.block_number),
            updated_block_hash = CASE
                WHEN (u.block_number, u.log_index) > (n.updated_block, n.updated_log_index)
                THEN u.block_hash ELSE n.updated_block_hash END,
            updated_log_index = CASE
                WHEN (u.block_number, u.log_index) > (n.updated_block, n.updated_log_index)
                THEN u.log_index ELSE n.updated_log_index END
        FROM unnest($2::bytea[], $3::text[]::numeric[], $4::uuid[], $5::text[], $6::bigint[],
                    $7::bytea[], $8::int[])
             AS u(contract, token_id, album_id, token_uri, block_number, block_hash, log_index)
        WHERE n.chain_id = $1 AND n.contract = u.contract AND n.token_id = u.token_id
        """,
        chain_id,
        *[[row[i] for row in rows] for i in range(7)],
    )
    album_ids = sorted({e.album_id for e in events if e.album_id is not None})
    if album_ids:
        await conn.execute(
            "UPDATE albums SET status = 'minted', updated_at = now() "
            "WHERE id = ANY($1::uuid[]) AND status <> 'minted'",
            album_ids,
        )


async def _store_window(conn: asyncpg.Connection, batch: Batch, prune_below: int) -> None:
    headers = batch.window or [batch.last]
    await conn.execute(
        """
        INSERT INTO blocks (chain_id, number, hash, parent_hash, timestamp)
        SELECT $1, u.number, u.hash, u.parent_hash, to_timestamp(u.ts)
        FROM unnest($2::bigint[], $3::bytea[], $4::bytea[], $5::bigint[])
             AS u(number, hash, parent_hash, ts)
        ON CONFLICT (chain_id, number) DO UPDATE SET
            hash = EXCLUDED.hash, parent_hash = EXCLUDED.parent_hash,
            timestamp = EXCLUDED.timestamp
        """,
        batch.chain_id,
        [h.number for h in headers],
        [h.hash for h in headers],
        [h.parent_hash for h in headers],
        [h.timestamp for h in headers],
    )
    await conn.execute(
        "DELETE FROM blocks WHERE chain_id = $1 AND number < $2", batch.chain_id, prune_below
    )


async def _advance_checkpoint(conn: asyncpg.Connection, batch: Batch) -> int | None:
    """Move the checkpoint from `first - 1` to the batch's last block, or fail: a batch never
    lands on top of a gap (exactly once, in order). Returns the finalized block it held."""
    moved = await conn.fetchrow(
        """
        WITH previous AS (SELECT finalized_block FROM checkpoints WHERE chain_id = $1)
        INSERT INTO checkpoints AS c (chain_id, block_number, block_hash, head_block,
                                      safe_block, finalized_block, block_timestamp, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7), now())
        ON CONFLICT (chain_id) DO UPDATE SET
            block_number = EXCLUDED.block_number, block_hash = EXCLUDED.block_hash,
            head_block = EXCLUDED.head_block, safe_block = EXCLUDED.safe_block,
            finalized_block = EXCLUDED.finalized_block,
            block_timestamp = EXCLUDED.block_timestamp, updated_at = now()
        WHERE c.block_number = $8
        RETURNING c.rollbacks, (SELECT finalized_block FROM previous) AS previous_finalized
        """,
        batch.chain_id,
        batch.last.number,
        batch.last.hash,
        batch.head,
        batch.safe,
        batch.finalized,
        batch.last.timestamp,
        batch.first - 1,
    )
    if moved is None:
        raise StaleBatch(f"checkpoint is not at block {batch.first - 1}: batch not applied")
    await conn.execute(
        "SELECT pg_notify($1, $2)",
        CHECKPOINT_CHANNEL,
        f"{batch.chain_id}:{batch.last.number}:0x{batch.last.hash.hex()}:{moved['rollbacks']}",
    )
    previous: int | None = moved["previous_finalized"]
    return previous


def _address(raw: bytes) -> str:
    return checksum_address(raw)


def transfer_message(t: Transfer | asyncpg.Record) -> dict[str, Any]:
    return {
        "type": "transfer",
        "chain_id": t[0],
        "block_number": t[2],
        "block_hash": "0x" + bytes(t[3]).hex(),
        "tx_hash": "0x" + bytes(t[5]).hex(),
        "log_index": t[4],
        "contract": _address(bytes(t[1])),
        "token_id": str(int(t[8])),
        "from": _address(bytes(t[6])),
        "to": _address(bytes(t[7])),
    }


def token_event_message(e: TokenEvent | asyncpg.Record) -> dict[str, Any]:
    kind = e[7]
    message: dict[str, Any] = {
        "type": "mint" if kind == "album_minted" else "metadata",
        "chain_id": e[0],
        "block_number": e[2],
        "block_hash": "0x" + bytes(e[3]).hex(),
        "tx_hash": "0x" + bytes(e[5]).hex(),
        "log_index": e[4],
        "contract": _address(bytes(e[1])),
        "token_id": str(int(e[6])),
        "uri": e[9],
    }
    if e[8] is not None:
        message["album_id"] = str(e[8])
    return message


async def _append_outbox(
    conn: asyncpg.Connection, chain_id: int, messages: Sequence[dict[str, Any]]
) -> int:
    """Chain events in chain order (block, log index)."""
    ordered = sorted(messages, key=lambda m: (m["block_number"], m["log_index"]))
    return await append_outbox(conn, chain_id, ordered)


async def _announce(conn: asyncpg.Connection, batch: Batch) -> int:
    messages = [transfer_message(t) for t in batch.transfers]
    messages += [token_event_message(e) for e in batch.token_events]
    return await _append_outbox(conn, batch.chain_id, messages)


async def _announce_finality(conn: asyncpg.Connection, batch: Batch, previous: int | None) -> int:
    """A `finalized` feed message when the finalized block moved up to an indexed block (its
    hash from the window, which keeps the finalized block): clients hold facts as tentative
    until one names a block at or above theirs."""
    final = batch.finalized
    if final is None or (previous is not None and final <= previous) or final > batch.last.number:
        return 0
    block_hash = await conn.fetchval(
        "SELECT hash FROM blocks WHERE chain_id = $1 AND number = $2", batch.chain_id, final
    )
    if block_hash is None:
        return 0
    message = {
        "type": "finalized",
        "chain_id": batch.chain_id,
        "block_number": final,
        "block_hash": "0x" + bytes(block_hash).hex(),
    }
    return await append_outbox(conn, batch.chain_id, [message])


@dataclass(frozen=True)
class Rollback:
    ancestor: int
    removed_transfers: int
    removed_token_events: int
    tokens_recomputed: int


async def rollback_to(
    conn: asyncpg.Connection, chain_id: int, ancestor: Header, depth: int | None
) -> Rollback:
    """Undo every chain-derived row above `ancestor` (which stays), in the caller's transaction.

    Owners, album links and URIs of the touched tokens are recomputed from the surviving
    history; albums whose only mint was orphaned go back to `minting`; each orphaned event is
    re-announced as `removed`; the checkpoint rewinds to the ancestor. `depth` is the reorg's
    depth, or None for an operator's rewind (`discograph reindex`), which is not a reorg.
    """
    removed_transfers = await conn.fetch(
        f"DELETE FROM transfers WHERE chain_id = $1 AND block_number > $2 "
        f"RETURNING {', '.join(TRANSFER_COLUMNS)}",
        chain_id,
        ancestor.number,
    )
    removed_events = await conn.fetch(
        f"DELETE FROM token_events WHERE chain_id = $1 AND block_number > $2 "
        f"RETURNING {', '.join(TOKEN_EVENT_COLUMNS)}",
        chain_id,
        ancestor.number,
    )
    touched = sorted(
        {(bytes(r["contract"]), int(r["token_id"])) for r in removed_transfers}
        | {(bytes(r["contract"]), int(r["token_id"])) for r in removed_events}
    )
    if touched:
        await _recompute_tokens(conn, chain_id, touched)
    orphaned_albums = sorted(
        {r["album_id"] for r in removed_events if r["album_id"] is not None}, key=str
    )
    if orphaned_albums:
        # Back to `minting`, or to `failed` when every mint request of the album failed for good
        # (a reorg turned its success into a revert the minter has already recorded).
        await conn.execute(
            """
            UPDATE albums SET updated_at = now(),
                status = CASE
                    WHEN EXISTS (SELECT 1 FROM mint_requests o WHERE o.album_id = albums.id)
                     AND NOT EXISTS (SELECT 1 FROM mint_requests o
                                     WHERE o.album_id = albums.id
                                       AND (o.status <> 'failed' OR o.final_at IS NULL))
                    THEN 'failed' ELSE 'minting' END
            WHERE id = ANY($1::uuid[]) AND status = 'minted'
              AND NOT EXISTS (SELECT 1 FROM token_events e
                              WHERE e.album_id = albums.id AND e.kind = 'album_minted')
            """,
            orphaned_albums,
        )
    await conn.execute(
        "DELETE FROM blocks WHERE chain_id = $1 AND number > $2", chain_id, ancestor.number
    )
    rollbacks = await conn.fetchval(
        """
        UPDATE checkpoints SET block_number = $2, block_hash = $3,
            block_timestamp = to_timestamp($4),
            last_reorg_depth = COALESCE($5, last_reorg_depth),
            last_reorg_block = CASE WHEN $5::int IS NULL THEN last_reorg_block ELSE $2 END,
            last_reorg_at = CASE WHEN $5::int IS NULL THEN last_reorg_at ELSE now() END,
            rollbacks = rollbacks + 1,
            updated_at = now()
        WHERE chain_id = $1
        RETURNING rollbacks
        """,
        chain_id,
        ancestor.number,
        ancestor.hash,
        ancestor.timestamp,
        depth,
    )
    await conn.execute(
        "SELECT pg_notify($1, $2)",
        CHECKPOINT_CHANNEL,
        f"{chain_id}:{ancestor.number}:0x{ancestor.hash.hex()}:{rollbacks or 0}",
    )
    removed = [transfer_message(r) for r in removed_transfers]
    removed += [token_event_message(r) for r in removed_events]
    for message in removed:
        message["removed_type"] = message["type"]
        message["type"] = "removed"
    if removed:
        await _append_outbox(conn, chain_id, removed)
    return Rollback(ancestor.number, len(removed_transfers), len(removed_events), len(touched))


async def _recompute_tokens(
    conn: asyncpg.Connection, chain_id: int, tokens: list[tuple[bytes, int]]
) -> None:
    contracts = [c for c, _ in tokens]
    token_ids = [t for _, t in tokens]
    await conn.execute(
        """
        DELETE FROM nfts n USING unnest($2::bytea[], $3::numeric[]) AS a(contract, token_id)
        WHERE n.chain_id = $1 AND n.contract = a.contract AND n.token_id = a.token_id
        """,
        chain_id,
        contracts,
        token_ids,
    )
    await conn.execute(
        """
        INSERT INTO nfts (chain_id, contract, token_id, owner, album_id, token_uri,
                          minted_block, minted_tx, updated_block, updated_block_hash,
                          updated_log_index, last_transfer_block, last_transfer_tx,
                          last_transfer_from)
        SELECT $1, a.contract, a.token_id, last.to_address, link.album_id, uri.token_uri,
               first.block_number, first.tx_hash,
               CASE WHEN ev.block_number IS NOT NULL
                         AND (ev.block_number, ev.log_index) > (last.block_number, last.log_index)
                    THEN ev.block_number ELSE last.block_number END,
               CASE WHEN ev.block_number IS NOT NULL
                         AND (ev.block_number, ev.log_index) > (last.block_number, last.log_index)
                    THEN ev.block_hash ELSE last.block_hash END,
               CASE WHEN ev.block_number IS NOT NULL
                         AND (ev.block_number, ev.log_index) > (last.block_number, last.log_index)
                    THEN ev.log_index ELSE last.log_index END,
               last.block_number, last.tx_hash, last.from_address
        FROM unnest($2::bytea[], $3::numeric[]) AS a(contract, token_id)
        CROSS JOIN LATERAL (
            SELECT t.to_address, t.block_number, t.block_hash, t.log_index, t.tx_hash,
                   t.from_address
            FROM transfers t
            WHERE t.chain_id = $1 AND t.contract = a.contract AND t.token_id = a.token_id
            ORDER BY t.block_number DESC, t.log_index DESC LIMIT 1) AS last
        CROSS JOIN LATERAL (
            SELECT t.block_number, t.tx_hash FROM transfers t
            WHERE t.chain_id = $1 AND t.contract = a.contract AND t.token_id = a.token_id
            ORDER BY t.block_number, t.log_index LIMIT 1) AS first
        LEFT JOIN LATERAL (
            SELECT e.album_id FROM token_events e
            WHERE e.chain_id = $1 AND e.contract = a.contract AND e.token_id = a.token_id
              AND e.kind = 'album_minted'
            ORDER BY e.block_number DESC, e.log_index DESC LIMIT 1) AS link ON true
        LEFT JOIN LATERAL (
            SELECT e.token_uri FROM token_events e
            WHERE e.chain_id = $1 AND e.contract = a.contract AND e.token_id = a.token_id
              AND e.token_uri IS NOT NULL
            ORDER BY e.block_number DESC, e.log_index DESC LIMIT 1) AS uri ON true
        LEFT JOIN LATERAL (
            SELECT e.block_number, e.block_hash, e.log_index FROM token_events e
            WHERE e.chain_id = $1 AND e.contract = a.contract AND e.token_id = a.token_id
            ORDER BY e.block_number DESC, e.log_index DESC LIMIT 1) AS ev ON true
        """,
        chain_id,
        contracts,
        token_ids,
    )
