"""What `discograph audit` reads from and writes to Postgres: the projection as of a block,
and the `audit_runs` rows that `/status` and the API's metrics show.

The projection may be ahead of the block being audited (the indexer follows the tip, the audit
reads the chain at the finalized block), so each token's state is taken as of that block: the
`nfts` row itself when its last change is at or below it (the common case, one index scan), and
otherwise the last transfer and the last known URI at or below it from the history tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg
import msgspec

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool

# Tokens minted at or below $3, each as of $3. `updated_block` is the block of the last event
# applied to the row (transfer or token event), so a row with `updated_block <= $3` is exactly
# the state as of $3; newer rows are rewound from `transfers` / `token_events`.
_PROJECTION_AT = """
SELECT n.token_id::text AS token_id,
       CASE WHEN n.updated_block <= $3 THEN n.owner ELSE (
           SELECT t.to_address FROM transfers t
           WHERE t.chain_id = n.chain_id AND t.contract = n.contract AND t.token_id = n.token_id
             AND t.block_number <= $3
           ORDER BY t.block_number DESC, t.log_index DESC LIMIT 1) END AS owner,
       CASE WHEN n.updated_block <= $3 THEN n.token_uri ELSE (
           SELECT e.token_uri FROM token_events e
           WHERE e.chain_id = n.chain_id AND e.contract = n.contract AND e.token_id = n.token_id
             AND e.token_uri IS NOT NULL AND e.block_number <= $3
           ORDER BY e.block_number DESC, e.log_index DESC LIMIT 1) END AS token_uri
FROM nfts n
WHERE n.chain_id = $1 AND n.contract = $2 AND n.minted_block <= $3
ORDER BY n.token_id
"""


@dataclass(frozen=True, slots=True)
class TokenState:
    owner: bytes | None
    token_uri: str | None


async def projection_at(
    conn: Conn, chain_id: int, contract: bytes, block: int
) -> dict[int, TokenState]:
    """Every token of `contract` the projection holds as of `block`: token id → state."""
    rows = await conn.fetch(_PROJECTION_AT, chain_id, contract, block)
    # Positional reads: this runs once per token (70,000 rows in 0.4 s by name, a third less so).
    return {int(r[0]): TokenState(r[1], r[2]) for r in rows}


async def indexed_chains(conn: Conn) -> list[asyncpg.Record]:
    """The checkpoint of each indexed chain: chain id, indexed block, finalized block."""
    return list(
        await conn.fetch(
            "SELECT chain_id, block_number, finalized_block FROM checkpoints ORDER BY chain_id"
        )
    )


async def contracts_of(conn: Conn, chain_id: int) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT address, kind FROM contracts WHERE chain_id = $1 ORDER BY address", chain_id
        )
    )


class AuditRun(msgspec.Struct, frozen=True):
    """One audit's outcome, as stored in `audit_runs`."""

    chain_id: int
    at: datetime
    finalized_block: int
    block_hash: bytes
    tokens: int
    differences: int
    kinds: dict[str, int]
    seconds: float


async def record_run(conn: Conn, run: AuditRun) -> None:
    await conn.execute(
        "INSERT INTO audit_runs (chain_id, at, finalized_block, block_hash, tokens,"
        " differences, kinds, seconds) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)",
        run.chain_id,
        run.at,
        run.finalized_block,
        run.block_hash,
        run.tokens,
        run.differences,
        msgspec.json.encode(run.kinds).decode(),
        run.seconds,
    )


async def last_run(conn: Conn, chain_id: int | None = None) -> AuditRun | None:
    """The newest audit of `chain_id` (of any chain when None); None when there is none, or
    when the database predates migration 0009 (an API rolled out before the migration)."""
    sql = (
        "SELECT chain_id, at, finalized_block, block_hash, tokens, differences,"
        " kinds::text AS kinds, seconds FROM audit_runs"
    )
    args: list[Any] = []
    if chain_id is not None:
        sql += " WHERE chain_id = $1"
        args.append(chain_id)
    sql += " ORDER BY at DESC LIMIT 1"
    try:
        row = await conn.fetchrow(sql, *args)
    except asyncpg.UndefinedTableError:
        return None
    if row is None:
        return None
    return AuditRun(
        chain_id=int(row["chain_id"]),
        at=row["at"],
        finalized_block=int(row["finalized_block"]),
        block_hash=bytes(row["block_hash"]),
        tokens=int(row["tokens"]),
        differences=int(row["differences"]),
        kinds=msgspec.json.decode(row["kinds"], type=dict[str, int]),
        seconds=float(row["seconds"]),
    )
