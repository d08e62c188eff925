"""`discograph audit`: the projection compared with what the node says at a finalized block.

Every read is pinned to one block hash (EIP-1898), the finalized block (capped at the indexed
block), so neither a reorg nor the indexer moving on can make the two sides disagree by timing.
For each followed contract the audit takes the projection's tokens as of that block
(`db.audits.projection_at`), enumerates the chain's tokens where the contract can say how many
it minted (`nextTokenId()`: AlbumNFT, the bench contract), and reads `ownerOf` (and `tokenURI`
for album contracts, whose URIs the indexer follows) of every token of either side in batched
JSON-RPC, a few batches in flight. Differences come in four kinds: `owner`, `token_uri`,
`missing` (on chain, not in the projection) and `extra` (in the projection, not on chain).
AlbumNFT has no view of a token's album id (only the `AlbumMinted` event carries it), so album
links cannot be checked against state.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TextIO

import asyncpg
import msgspec

from chain.failover import FailoverRpc
from db.audits import AuditRun, TokenState, contracts_of, indexed_chains, projection_at, record_run
from discograph.audit_chain import ChainToken, TokenReader, finalized_point
from discograph.encoding import checksum_address
from discograph.errors import ConfigError
from discograph.settings import Settings

KINDS = ("owner", "token_uri", "missing", "extra")
ZERO = bytes(20)


class Difference(msgspec.Struct, frozen=True):
    """One fact on which the projection and the chain disagree."""

    kind: str
    contract: str
    token_id: str
    projection: str | None
    chain: str | None


class ContractAudit(msgspec.Struct, frozen=True):
    address: str
    kind: str
    tokens: int
    # Whether the chain's own token list was read (`nextTokenId()`): only then can a token
    # missing from the projection be found.
    enumerated: bool


class AuditReport(msgspec.Struct, frozen=True):
    chain_id: int
    block: int
    block_hash: str
    at: datetime
    tokens: int
    seconds: float
    contracts: list[ContractAudit]
    differences: list[Difference]

    @property
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(KINDS, 0)
        for difference in self.differences:
            counts[difference.kind] += 1
        return counts

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def _holder(raw: bytes | None) -> bytes | None:
    """An owner, None for nobody (a token that does not exist, or burned to the zero address)."""
    return None if raw is None or raw == ZERO else raw


def _shown(raw: bytes | None) -> str | None:
    return None if raw is None else checksum_address(raw)


def compare(
    contract: bytes,
    projected: dict[int, TokenState],
    onchain: dict[int, ChainToken],
    *,
    check_uri: bool,
) -> list[Difference]:
    """The differences between one contract's projection and its chain state (pure).

    A token that does not exist on chain (burned, or never minted) and a projection row owned by
    the zero address (a burn) agree.
    """
    address = checksum_address(contract)
    found: list[Difference] = []
    for token_id in sorted(set(projected) | set(onchain)):
        mine = projected.get(token_id)
        theirs = onchain.get(token_id)
        # Bytes compared, checksummed only when shown: EIP-55 costs a keccak per address.
        chain_owner = _holder(theirs.owner) if theirs is not None else None
        if mine is None:
            if chain_owner is not None:
                found.append(
                    Difference("missing", address, str(token_id), None, _shown(chain_owner))
                )
            continue
        my_owner = _holder(mine.owner)
        if my_owner != chain_owner:
            kind = "extra" if chain_owner is None else "owner"
            found.append(
                Difference(kind, address, str(token_id), _shown(my_owner), _shown(chain_owner))
            )
            continue
        chain_uri = theirs.token_uri if theirs is not None else None
        if check_uri and chain_owner is not None and mine.token_uri != chain_uri:
            found.append(Difference("token_uri", address, str(token_id), mine.token_uri, chain_uri))
    return found


class AuditProgress:
    """Tokens checked and tokens/s on one line (rewritten in place on a TTY), like the indexer's."""

    def __init__(self, stream: TextIO, total: int, every: float = 1.0) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.every = every if self.tty else max(every, 10.0)
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.last_print = 0.0

    def advance(self, tokens: int) -> None:
        self.done += tokens
        self.show()

    def show(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_print < self.every:
            return
        self.last_print = now
        rate = self.done / max(now - self.started, 1e-9)
        left = max(self.total - self.done, 0)
        eta = f"{left / rate:,.0f}s" if rate > 0 and left else "0s"
        line = f"audited {self.done:,} / {self.total:,} tokens · {rate:,.0f} tokens/s · ETA {eta}"
        self.stream.write("\r\x1b[2K" + line if self.tty else line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        self.show(force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


async def _chain_checkpoint(conn: asyncpg.Connection, chain_id: int) -> asyncpg.Record:
    for row in await indexed_chains(conn):
        if row["chain_id"] == chain_id:
            return row
    raise ConfigError(f"chain {chain_id} is not indexed yet (run `discograph index` first)")


async def run_audit(
    settings: Settings,
    dsn: str,
    *,
    calls_per_batch: int = 200,
    in_flight: int = 4,
    progress: TextIO | None = None,
    record: bool = True,
) -> AuditReport:
    """Audit the chain the node is on; store the run in `audit_runs` (unless `record` is off)."""
    if not settings.rpc_url:
        raise ConfigError("RPC_URL is not set: the audit reads the chain from it")
    started = time.perf_counter()
    at = datetime.now(UTC)
    async with FailoverRpc(settings.rpc_url, timeout=settings.rpc_timeout) as rpc:
        chain_id = int(await rpc.call("eth_chainId"), 16)
        if settings.chain_id is not None and settings.chain_id != chain_id:
            raise ConfigError(f"CHAIN_ID is {settings.chain_id} but the node is on {chain_id}")
        conn = await asyncpg.connect(dsn)
        try:
            checkpoint = await _chain_checkpoint(conn, chain_id)
            block, block_hash = await finalized_point(
                rpc, checkpoint["finalized_block"], int(checkpoint["block_number"])
            )
            contracts = await contracts_of(conn, chain_id)
            # One snapshot for every contract's rows: a reindex in between cannot tear them.
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                projections = [
                    await projection_at(conn, chain_id, bytes(c["address"]), block)
                    for c in contracts
                ]
            reader = TokenReader(
                rpc, block_hash, calls_per_batch=calls_per_batch, in_flight=in_flight
            )
            plans: list[tuple[bytes, str, list[int], bool]] = []
            for c, projected in zip(contracts, projections, strict=True):
                address, kind = bytes(c["address"]), str(c["kind"])
                minted = await reader.next_token_id(address)
                first = 1 if kind == "album" else 0
                wanted = set(projected)
                if minted is not None:
                    wanted.update(range(first, minted))
                plans.append((address, kind, sorted(wanted), minted is not None))
            meter = AuditProgress(progress, sum(len(p[2]) for p in plans)) if progress else None
            differences: list[Difference] = []
            summaries: list[ContractAudit] = []
            for (address, kind, ids, enumerated), projected in zip(plans, projections, strict=True):
                album = kind == "album"
                onchain = await reader.tokens(
                    address, ids, with_uri=album, on_batch=meter.advance if meter else None
                )
                differences += compare(address, projected, onchain, check_uri=album)
                summaries.append(
                    ContractAudit(checksum_address(address), kind, len(ids), enumerated)
                )
            if meter is not None:
                meter.finish()
            report = AuditReport(
                chain_id=chain_id,
                block=block,
                block_hash="0x" + block_hash.hex(),
                at=at,
                tokens=sum(s.tokens for s in summaries),
                seconds=round(time.perf_counter() - started, 3),
                contracts=summaries,
                differences=differences,
            )
            if record:
                await record_run(conn, _as_run(report, block_hash))
            return report
        finally:
            await conn.close()


def _as_run(report: AuditReport, block_hash: bytes) -> AuditRun:
    return AuditRun(
        chain_id=report.chain_id,
        at=report.at,
        finalized_block=report.block,
        block_hash=block_hash,
        tokens=report.tokens,
        differences=len(report.differences),
        kinds=report.counts,
        seconds=report.seconds,
    )


def to_json(report: AuditReport) -> bytes:
    """The machine output of `discograph audit --json`."""
    body = msgspec.to_builtins(report)
    body["counts"] = report.counts
    body["tokens_per_second"] = round(report.tokens_per_second, 1)
    return msgspec.json.encode(body)


def summary(report: AuditReport, *, show: int = 50) -> list[str]:
    """The human summary: where, how much, how fast, then the first `show` differences."""
    lines = [
        f"audit of chain {report.chain_id} at finalized block {report.block} {report.block_hash}",
        f"  tokens       {report.tokens:,} checked in {report.seconds:,.1f}s "
        f"({report.tokens_per_second:,.0f} tokens/s)",
    ]
    for c in report.contracts:
        how = "enumerated by nextTokenId()" if c.enumerated else "projection's tokens only"
        lines.append(f"  contract     {c.kind:<6} {c.address} {c.tokens:,} tokens ({how})")
    counts = ", ".join(f"{kind} {n}" for kind, n in report.counts.items())
    lines.append(f"  differences  {len(report.differences)} ({counts})")
    for d in report.differences[:show]:
        lines.append(
            f"    {d.kind:<9} {d.contract} #{d.token_id}: projection {d.projection}, "
            f"chain {d.chain}"
        )
    if len(report.differences) > show:
        lines.append(f"    … and {len(report.differences) - show} more (--json lists them all)")
    if not report.differences:
        lines.append("  the projection matches the chain")
    return lines


def check_batching(calls_per_batch: int, in_flight: int) -> None:
    if not 2 <= calls_per_batch <= 10_000 or not 1 <= in_flight <= 64:
        raise ConfigError("--batch-size must be 2..10000 and --concurrency 1..64")
