"""Backfill benchmark: Discograph's indexer against an ideal hand-written pipeline, same chain.

    .venv/bin/python -m bench.backfill [--events N] [--per-block 100] [--rebuild]
                                       [--skip-discograph]

A deterministic chain (seeded RNG) of `--events` ERC-721 Transfer events from `BenchTransfers`,
`--per-block` per block (70 % mints, 30 % moves of existing tokens among 1,000 holders), is built
on anvil once and cached in `bench/.cache/` (anvil `--dump-state`); later runs reload it. Each
measurement gets a fresh database migrated to head, on an embedded Postgres (fsync off) unless
`BENCH_DATABASE_URL` names a server, and is verified against the chain before its figures count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
from eth_utils.address import to_checksum_address

from bench.reorg import measure_tip_reorgs
from bench.reorg import report as report_reorg
from chain.abi import deploy_data, encode_call, event_topic, load_artifact, selector
from chain.rpc import RpcClient, to_int
from chain.signer import Signer
from db.engine import drop_database, ensure_database, migrate, with_database
from discograph.embedded import start_postgres
from discograph.localchain import ANVIL_CHAIN_ID, ANVIL_DEV_KEYS, start_anvil
from discograph.processes import exit_cleanly_on_sigterm

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / "bench" / ".cache"
# Bump when the chain a given (events, per-block) builds changes, so old caches are rebuilt.
CHAIN_FORMAT = 2
# Fixed block timestamps (genesis, then one 12 s slot per block) make rebuilds byte-identical:
# same block hashes, not only the same events.
GENESIS_TIMESTAMP = 1_700_000_000
SLOT_SECONDS = 12
SEED = 20_240_611
HOLDERS = 1_000
MINT_SHARE = 0.7
# Gas per emitBlock: measured ~2.03M for 70 mints + 30 moves; the limit leaves ample headroom
# so no transaction needs eth_estimateGas.
GAS_BASE, GAS_PER_MINT, GAS_PER_MOVE = 60_000, 30_000, 20_000
MAX_FEE_PER_GAS = 10 * 10**9
ROWS_PER_TX = 10_000
OWNER_SAMPLE = 500
CALLS_PER_BATCH = 200
ZERO_ADDRESS = bytes(20)
TRANSFER_COLUMNS = (
    "chain_id", "contract", "block_number", "block_hash", "log_index", "tx_hash",
    "from_address", "to_address", "token_id",
)  # fmt: skip
STAGE_COLUMNS = (
    "token_id",
    "owner",
    "minted_block",
    "minted_tx",
    "updated_block",
    "last_tx",
    "last_from",
)
TRANSFER_TOPIC = event_topic(load_artifact("BenchTransfers").event("Transfer"))


class ChainInfo(msgspec.Struct, frozen=True):
    """The sidecar next to a cached chain: what was built, so runs need not re-derive it."""

    format: int
    seed: int
    events: int
    per_block: int
    contract: str
    first_block: int  # the first block with Transfer events (the one after the deploy)
    head: int
    expected_events: int
    minted_tokens: int
    build_seconds: float


@dataclass(frozen=True)
class BlockPlan:
    mint_to: list[str]
    move_ids: list[int]
    move_to: list[str]


@dataclass(frozen=True)
class Setup:
    """Where the measurements ran, for the report's machine line."""

    rpc_url: str
    server_dsn: str
    postgres_origin: str
    anvil_pid: int


def plan_blocks(events: int, per_block: int, seed: int = SEED) -> Iterator[BlockPlan]:
    """The chain's content, block by block: a pure function of its arguments."""
    rng = random.Random(seed)
    holders = [to_checksum_address(rng.randbytes(20)) for _ in range(HOLDERS)]
    next_id, left = 1, events
    while left > 0:
        count = min(per_block, left)
        mints = round(count * MINT_SHARE)  # at least 1: count >= 1
        moves = count - mints
        # Mints run first in emitBlock, so a move may pick a token minted in the same block.
        last_id = next_id + mints - 1
        yield BlockPlan(
            mint_to=[rng.choice(holders) for _ in range(mints)],
            move_ids=[rng.randint(1, last_id) for _ in range(moves)],
            move_to=[rng.choice(holders) for _ in range(moves)],
        )
        next_id, left = last_id + 1, left - count


def tokens_to_check(events: int, per_block: int, minted: int) -> list[int]:
    """Every token that moved plus a random sample of 500, in id order."""
    moved = {token for plan in plan_blocks(events, per_block) for token in plan.move_ids}
    sample = random.Random(SEED + 1).sample(range(1, minted + 1), min(OWNER_SAMPLE, minted))
    return sorted(moved.union(sample))


def cache_paths(events: int, per_block: int) -> tuple[Path, Path]:
    stem = f"backfill-{events}-{per_block}"
    return CACHE_DIR / f"{stem}.json", CACHE_DIR / f"{stem}.meta.json"


def load_cached_chain(events: int, per_block: int) -> ChainInfo | None:
    state, sidecar = cache_paths(events, per_block)
    if not (state.is_file() and sidecar.is_file()):
        return None
    try:
        info = msgspec.json.decode(sidecar.read_bytes(), type=ChainInfo)
    except msgspec.DecodeError:  # a damaged sidecar: rebuild rather than guess
        return None
    if (info.format, info.seed) != (CHAIN_FORMAT, SEED):
        return None
    return info


def _gas_for(plan: BlockPlan) -> int:
    return GAS_BASE + GAS_PER_MINT * len(plan.mint_to) + GAS_PER_MOVE * len(plan.move_ids)


def block_gas_limit(per_block: int) -> int:
    # Blocks stay under half the limit, so the base fee only falls and a fixed fee cap suffices.
    return max(30_000_000, 4 * (GAS_BASE + GAS_PER_MINT * per_block))


async def _send_and_mine(
    rpc: RpcClient, signer: Signer, *, nonce: int, gas: int, data: str, to: str | None = None
) -> str:
    """Sign with an explicit gas limit and fixed fees (no estimate round trips), send, mine."""
    tx: dict[str, Any] = {
        "type": 2,
        "chainId": ANVIL_CHAIN_ID,
        "nonce": nonce,
        "gas": gas,
        "maxFeePerGas": MAX_FEE_PER_GAS,
        "maxPriorityFeePerGas": 0,
        "value": 0,
        "data": data,
    }
    if to is not None:
        tx["to"] = to
    raw, tx_hash = signer.sign_transaction(tx)
    await rpc.call("eth_sendRawTransaction", [raw])
    # anvil runs with --no-mining: each transaction gets a block of its own, deterministically.
    # The sender's nonce is also the number of blocks so far (it mines nothing else).
    timestamp = GENESIS_TIMESTAMP + SLOT_SECONDS * (nonce + 1)
    await rpc.call("evm_mine", [{"timestamp": timestamp, "blocks": 1}])
    return tx_hash


async def _count_logs(rpc: RpcClient, contract: str, first: int, last: int, step: int) -> int:
    total = 0
    for start in range(first, last + 1, step):
        logs = await rpc.call(
            "eth_getLogs", [_log_filter(contract, start, min(last, start + step - 1))]
        )
        total += len(logs)
    return total


async def build_chain(rpc_url: str, events: int, per_block: int) -> ChainInfo:
    """Deploy BenchTransfers and mine one emitBlock transaction per block, as planned."""
    started = time.perf_counter()
    artifact = load_artifact("BenchTransfers")
    emit_block = artifact.function("emitBlock")
    signer = Signer(ANVIL_DEV_KEYS[0])
    async with RpcClient(rpc_url, timeout=120) as rpc:
        nonce = to_int(await rpc.call("eth_getTransactionCount", [signer.address, "pending"]))
        deploy_hash = await _send_and_mine(
            rpc, signer, nonce=nonce, gas=1_000_000, data=deploy_data(artifact)
        )
        receipt = await rpc.call("eth_getTransactionReceipt", [deploy_hash])
        if receipt is None or to_int(receipt["status"]) != 1:
            raise SystemExit(f"BenchTransfers deploy failed: {receipt}")
        contract = to_checksum_address(receipt["contractAddress"])
        first_block = to_int(receipt["blockNumber"]) + 1
        minted = 0
        for number, plan in enumerate(plan_blocks(events, per_block), start=1):
            data = encode_call(emit_block, plan.mint_to, plan.move_ids, plan.move_to)
            await _send_and_mine(
                rpc, signer, nonce=nonce + number, gas=_gas_for(plan), data=data, to=contract
            )
            minted += len(plan.mint_to)
            if number % 100 == 0:
                print(f"  built {number} blocks, {time.perf_counter() - started:.0f}s", flush=True)
        head = to_int(await rpc.call("eth_blockNumber"))
        # A reverted emitBlock would still mine a block: count what the chain really holds.
        found = await _count_logs(rpc, contract, first_block, head, _range_blocks(per_block))
        next_call = {"to": contract, "data": encode_call(artifact.function("nextTokenId"))}
        next_id = to_int(await rpc.call("eth_call", [next_call, "latest"]))
    blocks = math.ceil(events / per_block)
    if (found, next_id, head) != (events, minted + 1, first_block + blocks - 1):
        raise SystemExit(
            f"chain build is off: {found} logs (want {events}), nextTokenId {next_id} "
            f"(want {minted + 1}), head {head} (want {first_block + blocks - 1})"
        )
    return ChainInfo(
        format=CHAIN_FORMAT,
        seed=SEED,
        events=events,
        per_block=per_block,
        contract=contract,
        first_block=first_block,
        head=head,
        expected_events=events,
        minted_tokens=minted,
        build_seconds=round(time.perf_counter() - started, 1),
    )


def ensure_chain(events: int, per_block: int, workdir: Path, *, rebuild: bool) -> ChainInfo:
    """The cached chain for (events, per_block), built now when missing, stale or `rebuild`."""
    cached = None if rebuild else load_cached_chain(events, per_block)
    if cached is not None:
        return cached
    state, sidecar = cache_paths(events, per_block)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = state.with_suffix(".partial")
    sidecar.unlink(missing_ok=True)
    print(f"building the chain: {events:,} events, {per_block} per block (cached afterwards)")
    extra = (
        *("--no-mining", "--gas-limit", str(block_gas_limit(per_block))),
        *("--timestamp", str(GENESIS_TIMESTAMP)),
    )
    anvil = start_anvil(workdir, extra_args=(*extra, "--dump-state", str(partial)))
    try:
        info = asyncio.run(build_chain(anvil.rpc_url, events, per_block))
    except BaseException:
        anvil.stop()
        partial.unlink(missing_ok=True)
        raise
    anvil.process.stop(timeout=300)  # anvil writes --dump-state on the way out
    if anvil.process.popen.returncode != 0 or not partial.is_file():
        raise SystemExit(f"anvil did not save the chain; log {anvil.process.log_path}")
    # Sidecar last: a cache counts only when both files exist, so a killed build is redone.
    partial.replace(state)
    sidecar.write_bytes(msgspec.json.format(msgspec.json.encode(info)))
    print(f"built in {info.build_seconds:.1f}s -> {state.relative_to(REPO_ROOT)}")
    return info


def _range_blocks(per_block: int) -> int:
    return max(1, ROWS_PER_TX // per_block)


def _log_filter(contract: str, first: int, last: int) -> dict[str, Any]:
    topics = [TRANSFER_TOPIC]
    return {"fromBlock": hex(first), "toBlock": hex(last), "address": contract, "topics": topics}


def decode_transfers(logs: list[dict[str, Any]], chain_id: int) -> list[tuple[Any, ...]]:
    """Raw eth_getLogs entries as `transfers` rows, by slicing the topics (no ABI decoding)."""
    return [
        (
            chain_id,
            bytes.fromhex(log["address"][2:]),
            int(log["blockNumber"], 16),
            bytes.fromhex(log["blockHash"][2:]),
            int(log["logIndex"], 16),
            bytes.fromhex(log["transactionHash"][2:]),
            bytes.fromhex(log["topics"][1][26:]),
            bytes.fromhex(log["topics"][2][26:]),
            int(log["topics"][3], 16),
        )
        for log in logs
    ]


def last_owners(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """One stage row per token: the last transfer wins (rows come in chain order)."""
    owners: dict[int, tuple[Any, ...]] = {}
    for _, _, block, _, _, tx_hash, from_address, to_address, token_id in rows:
        seen = owners.get(token_id)
        if seen is None or from_address == ZERO_ADDRESS:
            # minted_* only matter for a token new to `nfts`, whose mint is in this batch.
            owners[token_id] = (token_id, to_address, block, tx_hash, block, tx_hash, from_address)
        else:
            owners[token_id] = (
                token_id,
                to_address,
                seen[2],
                seen[3],
                block,
                tx_hash,
                from_address,
            )
    return list(owners.values())


UPSERT_OWNERS = """
INSERT INTO nfts (chain_id, contract, token_id, owner, minted_block, minted_tx, updated_block,
                  last_transfer_block, last_transfer_tx, last_transfer_from)
SELECT $1, $2, token_id, owner, minted_block, minted_tx, updated_block,
       updated_block, last_tx, last_from
FROM bench_owners
ON CONFLICT (chain_id, contract, token_id)
DO UPDATE SET owner = EXCLUDED.owner, updated_block = EXCLUDED.updated_block,
    last_transfer_block = EXCLUDED.last_transfer_block,
    last_transfer_tx = EXCLUDED.last_transfer_tx, last_transfer_from = EXCLUDED.last_transfer_from
"""


async def ideal_pipeline(rpc_url: str, dsn: str, info: ChainInfo) -> float:
    """Fetch a range of logs, decode by slicing, COPY + one owner upsert, commit; repeat."""
    contract = bytes.fromhex(info.contract[2:])
    step = _range_blocks(info.per_block)
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TEMP TABLE bench_owners (token_id numeric(78,0), owner bytea,"
            " minted_block bigint, minted_tx bytea, updated_block bigint, last_tx bytea,"
            " last_from bytea) ON COMMIT DELETE ROWS"
        )
        async with aiohttp.ClientSession(headers={"content-type": "application/json"}) as http:
            for first in range(info.first_block, info.head + 1, step):
                last = min(info.head, first + step - 1)
                params = [_log_filter(info.contract, first, last)]
                body = {"jsonrpc": "2.0", "id": first, "method": "eth_getLogs", "params": params}
                async with http.post(rpc_url, data=msgspec.json.encode(body)) as response:
                    reply = msgspec.json.decode(await response.read())
                if "result" not in reply:
                    raise SystemExit(f"eth_getLogs {first}..{last} failed: {reply.get('error')}")
                logs = reply["result"]
                rows = decode_transfers(logs, ANVIL_CHAIN_ID)
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "transfers", records=rows, columns=TRANSFER_COLUMNS
                    )
                    await conn.copy_records_to_table(
                        "bench_owners", records=last_owners(rows), columns=STAGE_COLUMNS
                    )
                    await conn.execute(UPSERT_OWNERS, ANVIL_CHAIN_ID, contract)
        return time.perf_counter() - started
    finally:
        await conn.close()


async def run_discograph(rpc_url: str, dsn: str, info: ChainInfo) -> float | None:
    """`discograph index --until head` as a user runs it; None while the command does not exist."""
    env = os.environ | {
        "DATABASE_URL": dsn,
        "RPC_URL": rpc_url,
        "EXTRA_CONTRACTS": info.contract,
        "START_BLOCK": "0",
        "CONFIRMATIONS": "0",
        "LOG_LEVEL": "WARNING",
    }
    argv = [sys.executable, "-m", "discograph.cli", "index", "--until", "head"]
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 600 + info.events / 1_000)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    seconds = time.perf_counter() - started
    text = (out + err).decode(errors="replace")
    if process.returncode == 2 and "invalid choice" in text:
        return None
    if process.returncode != 0:
        raise SystemExit(f"discograph index exited with {process.returncode}:\n{text[-3000:]}")
    return seconds


async def read_owners(rpc: RpcClient, contract: str, tokens: list[int]) -> dict[int, bytes]:
    """`ownerOf` of each token, read from the chain with batched eth_calls."""
    prefix = "0x" + selector(load_artifact("BenchTransfers").function("ownerOf")).hex()
    owners: dict[int, bytes] = {}
    for start in range(0, len(tokens), CALLS_PER_BATCH):
        chunk = tokens[start : start + CALLS_PER_BATCH]
        calls = [
            ("eth_call", [{"to": contract, "data": f"{prefix}{t:064x}"}, "latest"]) for t in chunk
        ]
        for token, word in zip(chunk, await rpc.batch(calls), strict=True):
            owners[token] = bytes.fromhex(word[26:])
    return owners


async def verify(dsn: str, info: ChainInfo, owners: dict[int, bytes]) -> list[str]:
    """What the database gets wrong against the chain (empty when it is right)."""
    contract = bytes.fromhex(info.contract[2:])
    conn = await asyncpg.connect(dsn)
    try:
        where = "WHERE chain_id = $1 AND contract = $2"
        transfers = await conn.fetchval(
            f"SELECT count(*) FROM transfers {where}", ANVIL_CHAIN_ID, contract
        )
        nfts = await conn.fetchval(f"SELECT count(*) FROM nfts {where}", ANVIL_CHAIN_ID, contract)
        rows = await conn.fetch(
            f"SELECT token_id, owner FROM nfts {where} AND token_id = ANY($3::numeric[])",
            ANVIL_CHAIN_ID,
            contract,
            list(owners),
        )
    finally:
        await conn.close()
    problems = []
    if transfers != info.expected_events:
        problems.append(f"transfers has {transfers} rows, the chain {info.expected_events} events")
    if nfts != info.minted_tokens:
        problems.append(f"nfts has {nfts} rows, the chain minted {info.minted_tokens} tokens")
    stored = {int(row["token_id"]): bytes(row["owner"]) for row in rows}
    for token, owner in owners.items():
        if stored.get(token) != owner:
            got = stored[token].hex() if token in stored else "no row"
            problems.append(f"token {token}: nfts.owner {got}, ownerOf 0x{owner.hex()}")
    return problems


@contextlib.asynccontextmanager
async def fresh_database(server_dsn: str, label: str) -> AsyncIterator[str]:
    """A new database migrated to head, dropped afterwards."""
    dsn = with_database(server_dsn, f"bench_{label}_{os.getpid()}_{uuid.uuid4().hex[:6]}")
    await ensure_database(dsn)
    try:
        await migrate(dsn)
        yield dsn
    finally:
        await drop_database(dsn)


async def server_facts(server_dsn: str) -> str:
    conn = await asyncpg.connect(server_dsn)
    try:
        version = await conn.fetchval("SHOW server_version")
        fsync = await conn.fetchval("SHOW fsync")
        sync_commit = await conn.fetchval("SHOW synchronous_commit")
    finally:
        await conn.close()
    durable = "yes" if fsync == "on" and sync_commit != "off" else "no"
    settings = f"fsync={fsync}, synchronous_commit={sync_commit}"
    return f"PostgreSQL {version}, durable: {durable} ({settings})"


async def measure(
    setup: Setup, info: ChainInfo, *, skip_discograph: bool, skip_reorg: bool = False
) -> int:
    """Run, verify and report both pipelines; 1 when a database disagrees with the chain."""
    facts = f"{setup.postgres_origin}: {await server_facts(setup.server_dsn)}"
    tokens = tokens_to_check(info.events, info.per_block, info.minted_tokens)
    async with RpcClient(setup.rpc_url, timeout=60) as rpc:
        owners = await read_owners(rpc, info.contract, tokens)
    results: dict[str, float] = {}
    reorg: dict[str, Any] | None = None
    runs: list[tuple[str, Callable[[str, str, ChainInfo], Awaitable[float | None]]]]
    runs = [("ideal", ideal_pipeline)]
    if not skip_discograph:
        runs.append(("discograph", run_discograph))
    for name, run in runs:
        async with fresh_database(setup.server_dsn, name) as dsn:
            seconds = await run(setup.rpc_url, dsn, info)
            if seconds is None:
                print("discograph index not available yet")
                continue
            problems = await verify(dsn, info, owners)
            if name == "discograph" and not problems and not skip_reorg:
                # Last: it changes the chain (the cached state file stays as it was).
                reorg = await measure_tip_reorgs(setup.rpc_url, dsn, info.contract)
        for problem in problems[:20]:
            print(f"MISMATCH {name}: {problem}")
        if problems:
            print(f"{name}: {len(problems)} mismatches against the chain")
            return 1
        print(f"{name}: verified ({len(owners):,} owners against ownerOf)", flush=True)
        results[name] = seconds
    report(info, results, facts, anvil_rss=_rss_mib(setup.anvil_pid))
    if reorg is not None:
        report_reorg(reorg)
    return 0


def _rss_mib(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        status = Path(f"/proc/{pid}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) // 1024
    return None


def report(info: ChainInfo, results: dict[str, float], facts: str, anvil_rss: int | None) -> None:
    blocks = info.head - info.first_block + 1
    print(f"\nmachine: {os.cpu_count()} cores; {facts}")
    print(
        f"chain: BenchTransfers {info.contract}, blocks {info.first_block}..{info.head}, "
        f"build took {info.build_seconds:.0f}s, anvil RSS {anvil_rss} MiB"
    )
    print(f"\n{'pipeline':<12}{'events':>10}{'blocks':>8}{'seconds':>10}{'events/s':>11}")
    rates = {}
    for name, seconds in results.items():
        rates[name] = info.events / seconds
        print(f"{name:<12}{info.events:>10,}{blocks:>8,}{seconds:>10.2f}{rates[name]:>11,.0f}")
    if "discograph" not in rates:
        print("\ntargets (discograph ≥ 0.6 × ideal, ≥ 40,000 events/s): n/a, not run")
        return
    ratio = rates["discograph"] / rates["ideal"]
    print(f"\nratio discograph/ideal: {ratio:.2f}")
    for label, met in (
        ("≥ 0.6 × ideal", ratio >= 0.6),
        ("≥ 40,000 events/s", rates["discograph"] >= 40_000),
    ):
        print(f"target {label}: {'met' if met else 'not met'} (informational)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.backfill", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--events", type=int, default=100_000, help="Transfer events (default 100,000)"
    )
    parser.add_argument("--per-block", type=int, default=100, help="events per block (default 100)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached chain")
    parser.add_argument(
        "--skip-discograph", action="store_true", help="measure the ideal pipeline only"
    )
    parser.add_argument(
        "--skip-reorg", action="store_true", help="skip the tip-reorg repair measurement"
    )
    args = parser.parse_args(argv)
    if args.events < 1 or args.per_block < 1:
        parser.error("--events and --per-block must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_cleanly_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="discograph-bench-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        info = ensure_chain(args.events, args.per_block, workdir, rebuild=args.rebuild)
        state, _ = cache_paths(args.events, args.per_block)
        # Services start on this (main) thread: they die with it (see discograph.processes).
        anvil = start_anvil(workdir, extra_args=("--load-state", str(state)), timeout=120)
        stack.callback(anvil.stop)
        server_dsn = os.environ.get("BENCH_DATABASE_URL")
        origin = "Postgres from BENCH_DATABASE_URL"
        if not server_dsn:
            postgres = start_postgres(workdir / "postgres", durable=False)
            stack.callback(postgres.stop)
            server_dsn = postgres.dsn("postgres")
            origin = "embedded Postgres in a temp dir, started with durable=False"
        setup = Setup(anvil.rpc_url, server_dsn, origin, anvil.process.pid)
        return asyncio.run(
            measure(setup, info, skip_discograph=args.skip_discograph, skip_reorg=args.skip_reorg)
        )
    return 1  # unreachable: ExitStack does not swallow exceptions


if __name__ == "__main__":
    raise SystemExit(main())
