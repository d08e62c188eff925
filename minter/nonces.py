"""Nonces of the signing key: allocated from Postgres, reconciled with the node, never a gap.

The `signers` row (one per chain and address) holds the next nonce. It is locked `FOR UPDATE`
in the transaction that records the signed transactions, and that transaction commits before
anything is broadcast: a crash after the commit leaves a recorded transaction to send again,
never a nonce that was used without a record or a record without its nonce.
"""

from __future__ import annotations

import logging

import asyncpg

from minter.metrics import REBROADCASTS
from minter.node import Node
from minter.transitions import OPEN_STATUSES, UNSETTLED_FAILURE, recorded_from

log = logging.getLogger("discograph.minter")


async def _locked_next_nonce(
    conn: asyncpg.Connection, chain_id: int, address: bytes, node_pending: int
) -> int:
    await conn.execute(
        "INSERT INTO signers (chain_id, address, next_nonce) VALUES ($1, $2, $3)"
        " ON CONFLICT (chain_id, address) DO NOTHING",
        chain_id,
        address,
        node_pending,
    )
    value = await conn.fetchval(
        "SELECT next_nonce FROM signers WHERE chain_id = $1 AND address = $2 FOR UPDATE",
        chain_id,
        address,
    )
    return int(value)


async def _set_next_nonce(
    conn: asyncpg.Connection, chain_id: int, address: bytes, next_nonce: int
) -> None:
    await conn.execute(
        "UPDATE signers SET next_nonce = $3, updated_at = now()"
        " WHERE chain_id = $1 AND address = $2",
        chain_id,
        address,
        next_nonce,
    )


def _warn_foreign_use(address: bytes, ours: int, node_pending: int) -> None:
    log.warning(
        "the node counts more transactions of the signing key than we sent: another sender "
        "used it; skipping its nonces",
        extra={"signer": "0x" + address.hex(), "next_nonce": ours, "node_pending": node_pending},
    )


async def allocate_nonces(
    conn: asyncpg.Connection, chain_id: int, address: bytes, count: int, node_pending: int
) -> int:
    """Inside the recording transaction: reserve `count` consecutive nonces; returns the first.

    Never below the node's pending count: nonces someone else used are skipped, not reused."""
    ours = await _locked_next_nonce(conn, chain_id, address, node_pending)
    if node_pending > ours:
        _warn_foreign_use(address, ours, node_pending)
    first = max(ours, node_pending)
    await _set_next_nonce(conn, chain_id, address, first + count)
    return first


async def next_nonce(conn: asyncpg.Connection, chain_id: int, address: bytes) -> int | None:
    value = await conn.fetchval(
        "SELECT next_nonce FROM signers WHERE chain_id = $1 AND address = $2", chain_id, address
    )
    return None if value is None else int(value)


async def send_again(
    conn: asyncpg.Connection, node: Node, address: bytes, from_nonce: int, reason: str
) -> int:
    """Broadcast our recorded transactions from `from_nonce` on, in nonce order, so the node
    has no gap before the later ones; returns how many were sent."""
    rows = await recorded_from(conn, address, from_nonce)
    for row in rows:
        await node.broadcast(bytes(row["raw_tx"]))
        REBROADCASTS.labels(reason=reason).inc()
    if rows:
        log.info(
            "sent recorded transactions again",
            extra={"reason": reason, "from_nonce": from_nonce, "count": len(rows)},
        )
    return len(rows)


async def reconcile(conn: asyncpg.Connection, node: Node, chain_id: int, address: bytes) -> int:
    """At start: line the `signers` row up with the node's pending count; returns the next nonce.

    Node ahead of the row: someone else used the key, move the row up. Row ahead of the node:
    the node lost (or never got) our latest transactions, send them again in nonce order.
    """
    node_pending = await node.pending_count()
    async with conn.transaction():
        ours = await _locked_next_nonce(conn, chain_id, address, node_pending)
        if node_pending > ours:
            _warn_foreign_use(address, ours, node_pending)
            await _set_next_nonce(conn, chain_id, address, node_pending)
            ours = node_pending
    if node_pending < ours:
        await send_again(conn, node, address, node_pending, "restart")
    log.info(
        "nonces reconciled",
        extra={"signer": "0x" + address.hex(), "next_nonce": ours, "node_pending": node_pending},
    )
    return ours


async def recorded_nonces(
    conn: asyncpg.Connection, address: bytes, first: int, end: int
) -> set[int]:
    """Nonces in [first, end) that hold one of our recorded mint transactions."""
    rows = await conn.fetch(
        "SELECT DISTINCT nonce FROM mint_requests WHERE signer = $1 AND nonce >= $2 AND nonce < $3",
        address,
        first,
        end,
    )
    return {int(row["nonce"]) for row in rows}


async def count_gaps(
    conn: asyncpg.Connection, address: bytes, mined_count: int, next_nonce: int
) -> int:
    """Nonces from the node's mined count up to our next one that no open mint holds (a revert
    whose block is not final is still followed, so it holds its nonce too)."""
    if next_nonce <= mined_count:
        return 0
    recorded = await conn.fetchval(
        "SELECT count(DISTINCT nonce) FROM mint_requests"
        " WHERE signer = $1 AND nonce >= $3 AND nonce < $4"
        f" AND (status = ANY($2::text[]) OR ({UNSETTLED_FAILURE}))",
        address,
        list(OPEN_STATUSES),
        mined_count,
        next_nonce,
    )
    return max(0, next_nonce - mined_count - int(recorded))
