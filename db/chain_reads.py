"""Read queries over the chain-derived tables (`nfts`, `transfers`, `token_events`).

asyncpg with `$n` parameters only; statements are assembled from constant fragments by
`_Query`, which numbers the parameters. Lists are keyset-paginated (a row comparison on the sort
key, never OFFSET) and ask for `limit + 1` rows so the caller knows whether a next page exists.
Token ids travel as decimal text and are cast `::numeric` in SQL; they come back as text.
Every statement is an index scan on the indexes of `db/tables.py` (tests/test_api_nfts.py
checks the plans of the owner, history and address-filtered transfer queries).
"""

from __future__ import annotations

from typing import Any, TypeAlias

import asyncpg

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool
ZERO_ADDRESS = bytes(20)


class _Query:
    """Numbers `$n` parameters as fragments are added (values never enter the SQL text)."""

    def __init__(self) -> None:
        self.args: list[Any] = []

    def p(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"


NEWEST_FIRST = "ORDER BY block_number DESC, log_index DESC"

TRANSFER_COLUMNS = (
    "chain_id, contract, token_id::text AS token_id, from_address, to_address, tx_hash,"
    " log_index, block_number, block_hash"
)

# Current state: the `nfts` row alone (it carries its last transfer, whose `to` is the owner).
_NFT_LATEST = """
SELECT n.contract, n.token_id::text AS token_id, n.owner, n.album_id, n.token_uri,
       n.minted_block, n.minted_tx,
       n.updated_block AS block_number, n.updated_block_hash AS block_hash,
       n.last_transfer_block AS last_block, n.last_transfer_tx AS last_tx,
       n.last_transfer_from AS last_from, n.owner AS last_to
FROM nfts n
"""


def _nft_at_block(source: str, chain: str, block: str) -> str:
    """State of the tokens of `source` (rows `a(contract, token_id)`) as of block `block`:
    the last transfer at or below it, and the album link / token URI events up to it; the
    provenance is the later of the last transfer and the last token event."""
    return f"""
SELECT a.contract, a.token_id::text AS token_id, last.to_address AS owner, link.album_id,
       uri.token_uri, first.block_number AS minted_block, first.tx_hash AS minted_tx,
       CASE WHEN ev.block_number IS NOT NULL
                 AND (ev.block_number, ev.log_index) > (last.block_number, last.log_index)
            THEN ev.block_number ELSE last.block_number END AS block_number,
       CASE WHEN ev.block_number IS NOT NULL
                 AND (ev.block_number, ev.log_index) > (last.block_number, last.log_index)
            THEN ev.block_hash ELSE last.block_hash END AS block_hash,
       last.block_number AS last_block, last.tx_hash AS last_tx,
       last.from_address AS last_from, last.to_address AS last_to
FROM {source} AS a(contract, token_id)
CROSS JOIN LATERAL (
    SELECT t.block_number, t.block_hash, t.log_index, t.tx_hash, t.from_address, t.to_address
    FROM transfers t
    WHERE t.chain_id = {chain} AND t.contract = a.contract AND t.token_id = a.token_id
      AND t.block_number <= {block}
    ORDER BY t.block_number DESC, t.log_index DESC LIMIT 1) AS last
CROSS JOIN LATERAL (
    SELECT t.block_number, t.tx_hash FROM transfers t
    WHERE t.chain_id = {chain} AND t.contract = a.contract AND t.token_id = a.token_id
    ORDER BY t.block_number, t.log_index LIMIT 1) AS first
LEFT JOIN LATERAL (
    SELECT e.album_id FROM token_events e
    WHERE e.chain_id = {chain} AND e.contract = a.contract AND e.token_id = a.token_id
      AND e.kind = 'album_minted' AND e.block_number <= {block}
    ORDER BY e.block_number DESC, e.log_index DESC LIMIT 1) AS link ON true
LEFT JOIN LATERAL (
    SELECT e.token_uri FROM token_events e
    WHERE e.chain_id = {chain} AND e.contract = a.contract AND e.token_id = a.token_id
      AND e.token_uri IS NOT NULL AND e.block_number <= {block}
    ORDER BY e.block_number DESC, e.log_index DESC LIMIT 1) AS uri ON true
LEFT JOIN LATERAL (
    SELECT e.block_number, e.block_hash, e.log_index FROM token_events e
    WHERE e.chain_id = {chain} AND e.contract = a.contract AND e.token_id = a.token_id
      AND e.block_number <= {block}
    ORDER BY e.block_number DESC, e.log_index DESC LIMIT 1) AS ev ON true
"""


def nft_query(
    chain_id: int, contract: bytes, token_id: str, at_block: int | None
) -> tuple[str, list[Any]]:
    q = _Query()
    chain = q.p(chain_id)
    if at_block is None:
        sql = (
            _NFT_LATEST
            + f"WHERE n.chain_id = {chain} AND n.contract = {q.p(contract)}"
            + f" AND n.token_id = {q.p(token_id)}::numeric"
        )
        return sql, q.args
    source = f"(VALUES ({q.p(contract)}::bytea, {q.p(token_id)}::numeric))"
    return _nft_at_block(source, chain, q.p(at_block) + "::bigint"), q.args


async def nft(
    conn: Conn, chain_id: int, contract: bytes, token_id: str, at_block: int | None = None
) -> asyncpg.Record | None:
    """One token (current, or as of `at_block`); None when it does not exist (yet)."""
    sql, args = nft_query(chain_id, contract, token_id, at_block)
    return await conn.fetchrow(sql, *args)


def owner_nfts_query(
    chain_id: int,
    owner: bytes,
    at_block: int | None,
    after: tuple[bytes, str] | None,
    limit: int,
) -> tuple[str, list[Any]]:
    q = _Query()
    chain, who = q.p(chain_id), q.p(owner)
    if at_block is None:
        sql = _NFT_LATEST + f"WHERE n.chain_id = {chain} AND n.owner = {who}"
        if after is not None:
            sql += f" AND (n.contract, n.token_id) > ({q.p(after[0])}, {q.p(after[1])}::numeric)"
        sql += f" ORDER BY n.contract, n.token_id LIMIT {q.p(limit)}"
        return sql, q.args
    block = q.p(at_block) + "::bigint"
    # Candidates: tokens ever sent to the owner up to the block (the to_address index);
    # each is kept when its last transfer up to the block still points at the owner.
    source = (
        f"(SELECT DISTINCT c.contract, c.token_id FROM transfers c WHERE c.chain_id = {chain}"
        f" AND c.to_address = {who} AND c.block_number <= {block}"
    )
    if after is not None:
        source += f" AND (c.contract, c.token_id) > ({q.p(after[0])}, {q.p(after[1])}::numeric)"
    source += ")"
    sql = (
        _nft_at_block(source, chain, block)
        + f"WHERE last.to_address = {who} ORDER BY a.contract, a.token_id LIMIT {q.p(limit)}"
    )
    return sql, q.args


async def owner_nfts(
    conn: Conn,
    chain_id: int,
    owner: bytes,
    *,
    at_block: int | None,
    after: tuple[bytes, str] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Tokens held by `owner`, by (contract, token_id), after the keyset `after`."""
    if owner == ZERO_ADDRESS:
        return []
    sql, args = owner_nfts_query(chain_id, owner, at_block, after, limit)
    return list(await conn.fetch(sql, *args))


def token_transfers_query(
    chain_id: int,
    contract: bytes,
    token_id: str,
    before: tuple[int, int] | None,
    limit: int,
) -> tuple[str, list[Any]]:
    return transfers_query(
        chain_id,
        contract=contract,
        address=None,
        token_id=token_id,
        from_block=None,
        to_block=None,
        before=before,
        limit=limit,
    )


def transfers_query(
    chain_id: int,
    *,
    contract: bytes | None,
    address: bytes | None,
    token_id: str | None,
    from_block: int | None,
    to_block: int | None,
    before: tuple[int, int] | None,
    limit: int,
) -> tuple[str, list[Any]]:
    """Transfers newest first. With `address`, a UNION of the from- and to-index scans, each
    ordered and limited, merged and limited again (a self-transfer appears once)."""
    q = _Query()
    chain = q.p(chain_id)
    conditions: list[str] = []
    if contract is not None:
        conditions.append(f"contract = {q.p(contract)}")
    if token_id is not None:
        conditions.append(f"token_id = {q.p(token_id)}::numeric")
    if from_block is not None:
        conditions.append(f"block_number >= {q.p(from_block)}::bigint")
    if to_block is not None:
        conditions.append(f"block_number <= {q.p(to_block)}::bigint")
    if before is not None:
        conditions.append(
            f"(block_number, log_index) < ({q.p(before[0])}::bigint, {q.p(before[1])}::int)"
        )
    rows = q.p(limit)
    rest = "".join(" AND " + c for c in conditions)
    if address is None:
        return (
            f"SELECT {TRANSFER_COLUMNS} FROM transfers WHERE chain_id = {chain}{rest}"
            f" {NEWEST_FIRST} LIMIT {rows}",
            q.args,
        )
    who = q.p(address)
    branches = [
        f"(SELECT {TRANSFER_COLUMNS} FROM transfers WHERE chain_id = {chain}"
        f" AND {side} = {who}{rest} {NEWEST_FIRST} LIMIT {rows})"
        for side in ("from_address", "to_address")
    ]
    sql = f"SELECT * FROM ({branches[0]} UNION {branches[1]}) AS u {NEWEST_FIRST} LIMIT {rows}"
    return sql, q.args


async def transfers(conn: Conn, chain_id: int, **filters: Any) -> list[asyncpg.Record]:
    """Transfers matching the filters of `transfers_query`, newest first."""
    sql, args = transfers_query(chain_id, **filters)
    return list(await conn.fetch(sql, *args))


async def token_transfers(
    conn: Conn,
    chain_id: int,
    contract: bytes,
    token_id: str,
    *,
    before: tuple[int, int] | None,
    limit: int,
) -> list[asyncpg.Record]:
    sql, args = token_transfers_query(chain_id, contract, token_id, before, limit)
    return list(await conn.fetch(sql, *args))


def holders_query(
    chain_id: int,
    contract: bytes,
    at_block: int | None,
    after: tuple[int, bytes] | None,
    limit: int,
) -> tuple[str, list[Any]]:
    """(owner, count) of a contract by count desc, owner asc, zero address excluded."""
    q = _Query()
    chain, where = q.p(chain_id), q.p(contract)
    zero = q.p(ZERO_ADDRESS)
    if at_block is None:
        state = (
            f"SELECT owner FROM nfts WHERE chain_id = {chain} AND contract = {where}"
            f" AND owner <> {zero}"
        )
    else:
        state = (
            "SELECT owner FROM (SELECT DISTINCT ON (token_id) to_address AS owner"
            f" FROM transfers WHERE chain_id = {chain} AND contract = {where}"
            f" AND block_number <= {q.p(at_block)}::bigint"
            " ORDER BY token_id, block_number DESC, log_index DESC) AS s"
            f" WHERE owner <> {zero}"
        )
    sql = f"SELECT owner, count(*) AS count FROM ({state}) AS h GROUP BY owner"
    if after is not None:
        count, owner = q.p(after[0]), q.p(after[1])
        sql += f" HAVING (count(*) < {count} OR (count(*) = {count} AND owner > {owner}))"
    sql += f" ORDER BY count(*) DESC, owner LIMIT {q.p(limit)}"
    return sql, q.args


async def holders(
    conn: Conn,
    chain_id: int,
    contract: bytes,
    *,
    at_block: int | None,
    after: tuple[int, bytes] | None,
    limit: int,
) -> list[asyncpg.Record]:
    sql, args = holders_query(chain_id, contract, at_block, after, limit)
    return list(await conn.fetch(sql, *args))
