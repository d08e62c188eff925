"""The outbox, the feed's durable log: appending (every writer goes through here), reading
after a cursor, and pruning old rows.

Outbox seqs must become visible in order (DESIGN.md): each writer takes the outbox advisory
lock for the rest of its transaction before inserting, so a reader resuming "after N" never
misses a seq that commits late. The NOTIFY is delivered at commit, with the rows, and names the
last seq appended.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec

from db.locks import OUTBOX_CHANNEL, OUTBOX_LOCK_ID


async def append_outbox(
    conn: asyncpg.Connection, chain_id: int, messages: Sequence[dict[str, Any]]
) -> int:
    """Append `messages` (each with a `type`) in the given order, inside the caller's
    transaction; returns how many were appended."""
    if not messages:
        return 0
    await conn.execute("SELECT pg_advisory_xact_lock($1)", OUTBOX_LOCK_ID)
    last = await conn.fetchval(
        """
        WITH appended AS (
            INSERT INTO outbox (chain_id, kind, payload)
            SELECT $1, u.kind, u.payload::jsonb
            FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS u(kind, payload, n)
            ORDER BY u.n
            RETURNING seq
        )
        SELECT max(seq) FROM appended
        """,
        chain_id,
        [m["type"] for m in messages],
        [msgspec.json.encode(m).decode() for m in messages],
    )
    await conn.execute(
        "SELECT pg_notify($1, $2)", OUTBOX_CHANNEL, f"{chain_id}:{len(messages)}:{last}"
    )
    return len(messages)


async def read_outbox(
    conn: asyncpg.Connection | asyncpg.Pool, after: int, limit: int, until: int | None = None
) -> list[asyncpg.Record]:
    """Rows with `after < seq` (and `seq <= until`), oldest first:
    (seq, kind, payload text, created_at)."""
    return list(
        await conn.fetch(
            "SELECT seq, kind, payload::text AS payload, created_at FROM outbox"
            " WHERE seq > $1 AND ($2::bigint IS NULL OR seq <= $2) ORDER BY seq LIMIT $3",
            after,
            until,
            limit,
        )
    )


async def outbox_bounds(conn: asyncpg.Connection | asyncpg.Pool) -> tuple[int, int] | None:
    """The oldest and newest retained seq, or None for an empty outbox."""
    row = await conn.fetchrow("SELECT min(seq) AS first, max(seq) AS last FROM outbox")
    if row is None or row["first"] is None:
        return None
    return int(row["first"]), int(row["last"])


async def prune_outbox(
    conn: asyncpg.Connection | asyncpg.Pool, older_than_seconds: float, batch: int = 5000
) -> int:
    """Delete one batch of rows older than the retention; returns how many went.

    The newest row always stays, so the oldest retained seq tells a resuming reader whether
    its cursor was pruned away. Deleting takes no outbox lock: writers are never blocked.
    """
    deleted = await conn.fetchval(
        """
        WITH oldest AS (
            SELECT seq, created_at FROM outbox ORDER BY seq LIMIT $2
        ), doomed AS (
            SELECT seq FROM oldest
            WHERE created_at < now() - make_interval(secs => $1)
              AND seq < (SELECT max(seq) FROM outbox)
        ), gone AS (
            DELETE FROM outbox o USING doomed d WHERE o.seq = d.seq RETURNING 1
        )
        SELECT count(*) FROM gone
        """,
        older_than_seconds,
        batch,
    )
    return int(deleted or 0)
