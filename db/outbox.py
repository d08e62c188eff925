"""Appending to the outbox, the feed's durable log: every writer goes through here.

Outbox seqs must become visible in order (DESIGN.md): each writer takes the outbox advisory
lock for the rest of its transaction before inserting, so a reader resuming "after N" never
misses a seq that commits late. The NOTIFY is delivered at commit, with the rows.
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
    await conn.execute(
        """
        INSERT INTO outbox (chain_id, kind, payload)
        SELECT $1, u.kind, u.payload::jsonb
        FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS u(kind, payload, n)
        ORDER BY u.n
        """,
        chain_id,
        [m["type"] for m in messages],
        [msgspec.json.encode(m).decode() for m in messages],
    )
    await conn.execute("SELECT pg_notify($1, $2)", OUTBOX_CHANNEL, f"{chain_id}:{len(messages)}")
    return len(messages)
