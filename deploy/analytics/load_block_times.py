"""Copy the timestamp of every block that holds an indexed event into `analytics.block_times`.

Discograph's schema keeps block numbers, not times, for its history: `blocks` is only the
unfinalized window the indexer needs for reorgs. Per-day analytics (docs/schema.md, "Analytics
examples") join this table instead. It lives in a schema of its own, `analytics`, so the
indexer's tables stay read-only for analytics tools.

    DATABASE_URL=postgresql://me@db/discograph RPC_URL=https://node.example \\
        .venv/bin/python deploy/analytics/load_block_times.py

Each run fetches, by block hash, the header of every block that holds a transfer or a token event
and whose hash is not in the table yet: the first run loads the history, later runs the new
blocks (run it from cron, every few minutes). A block that a reorg replaced is fetched again,
since its events name the new hash. Only the first `RPC_URL` entry is used.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request
from datetime import UTC, datetime
from typing import Any

import asyncpg

BATCH = 200  # headers per JSON-RPC batch

CREATE = """
CREATE SCHEMA IF NOT EXISTS analytics;
CREATE TABLE IF NOT EXISTS analytics.block_times (
    chain_id bigint NOT NULL,
    number bigint NOT NULL,
    hash bytea NOT NULL,
    ts timestamptz NOT NULL,
    PRIMARY KEY (chain_id, number)
);
"""

# Blocks with an event whose (number, hash) the table does not hold yet.
MISSING = """
SELECT DISTINCT e.block_number, e.block_hash
FROM (SELECT block_number, block_hash FROM transfers WHERE chain_id = $1
      UNION ALL
      SELECT block_number, block_hash FROM token_events WHERE chain_id = $1) AS e
WHERE NOT EXISTS (
    SELECT 1 FROM analytics.block_times b
    WHERE b.chain_id = $1 AND b.number = e.block_number AND b.hash = e.block_hash)
ORDER BY e.block_number
"""

UPSERT = """
INSERT INTO analytics.block_times (chain_id, number, hash, ts)
SELECT $1, u.number, u.hash, to_timestamp(u.ts)
FROM unnest($2::bigint[], $3::bytea[], $4::bigint[]) AS u(number, hash, ts)
ON CONFLICT (chain_id, number) DO UPDATE SET hash = EXCLUDED.hash, ts = EXCLUDED.ts
"""


def rpc_batch(url: str, calls: list[tuple[str, list[Any]]], timeout: float = 30.0) -> list[Any]:
    """One JSON-RPC batch over HTTP; results in call order (an error answer raises)."""
    body = [
        {"jsonrpc": "2.0", "id": index, "method": method, "params": params}
        for index, (method, params) in enumerate(calls)
    ]
    request = urllib.request.Request(  # noqa: S310 (the operator's own node URL)
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
        replies = json.loads(answer.read())
    by_id = {reply["id"]: reply for reply in replies}
    results = []
    for index, (method, _) in enumerate(calls):
        reply = by_id.get(index)
        if reply is None or "error" in reply:
            raise RuntimeError(f"{method} failed: {reply and reply.get('error')}")
        results.append(reply["result"])
    return results


async def load_block_times(database_url: str, rpc_url: str) -> int:
    """Fill `analytics.block_times` for every indexed block missing from it; returns how many
    blocks were written."""
    (chain_hex,) = await asyncio.to_thread(rpc_batch, rpc_url, [("eth_chainId", [])])
    chain_id = int(chain_hex, 16)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(CREATE)
        missing = await conn.fetch(MISSING, chain_id)
        written = 0
        for start in range(0, len(missing), BATCH):
            rows = missing[start : start + BATCH]
            calls: list[tuple[str, list[Any]]] = [
                ("eth_getBlockByHash", ["0x" + bytes(row["block_hash"]).hex(), False])
                for row in rows
            ]
            headers = await asyncio.to_thread(rpc_batch, rpc_url, calls)
            numbers, hashes, stamps = [], [], []
            for row, header in zip(rows, headers, strict=True):
                if header is None:
                    continue  # orphaned meanwhile: the indexer replaces its events
                numbers.append(row["block_number"])
                hashes.append(bytes(row["block_hash"]))
                stamps.append(int(header["timestamp"], 16))
            await conn.execute(UPSERT, chain_id, numbers, hashes, stamps)
            written += len(numbers)
        return written
    finally:
        await conn.close()


def main() -> int:
    database_url = os.environ.get("DATABASE_URL", "")
    rpc_url = os.environ.get("RPC_URL", "").split(",")[0].strip()
    if not database_url or not rpc_url:
        print("load_block_times: set DATABASE_URL and RPC_URL", file=sys.stderr)
        return 2
    written = asyncio.run(load_block_times(database_url, rpc_url))
    print(f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} block times loaded: {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
