"""Audit benchmark: `discograph audit` tokens/s on the backfill bench chain, against a ceiling.

    .venv/bin/python -m bench.audit [--events N] [--per-block 100] [--batch-size 200]
                                    [--concurrency 4]

Reuses `bench.backfill`'s cached chain (70,000 tokens for the default 100,000 events; built and
cached on first use), indexes it with `discograph index --until head` into a fresh database,
mines 70 empty blocks so every token is below anvil's finalized block (head − 64), then runs the
audit in process and checks that it is clean and covered every minted token. The ceiling is a
hand-written loop: the same `ownerOf` calls at the same block hash, pre-encoded, in batches of the
same size with as many in flight, over one aiohttp session, answers not even decoded: what the
node alone allows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import msgspec

from bench.backfill import (
    ChainInfo,
    cache_paths,
    ensure_chain,
    fresh_database,
    run_discograph,
    server_facts,
)
from chain.rpc import RpcClient
from discograph.audit import run_audit
from discograph.audit_chain import OWNER_OF
from discograph.embedded import start_postgres
from discograph.localchain import start_anvil
from discograph.processes import exit_cleanly_on_sigterm
from discograph.settings import load_settings

FINALITY_BLOCKS = 70


async def ceiling(rpc_url: str, info: ChainInfo, block_hash: str, size: int, flight: int) -> float:
    """Seconds for raw batched `ownerOf` of every token at `block_hash`, `flight` in the air."""
    at = {"blockHash": block_hash}
    bodies = []
    for first in range(1, info.minted_tokens + 1, size):
        last = min(info.minted_tokens, first + size - 1)
        bodies.append(
            msgspec.json.encode(
                [
                    {
                        "jsonrpc": "2.0",
                        "id": t,
                        "method": "eth_call",
                        "params": [{"to": info.contract, "data": f"{OWNER_OF}{t:064x}"}, at],
                    }
                    for t in range(first, last + 1)
                ]
            )
        )
    queue = iter(bodies)
    started = time.perf_counter()
    async with aiohttp.ClientSession(headers={"content-type": "application/json"}) as http:

        async def worker() -> None:
            for body in queue:
                async with http.post(rpc_url, data=body) as response:
                    await response.read()

        async with asyncio.TaskGroup() as group:
            for _ in range(flight):
                group.create_task(worker())
    return time.perf_counter() - started


async def measure(rpc_url: str, server_dsn: str, info: ChainInfo, args: argparse.Namespace) -> int:
    async with RpcClient(rpc_url, timeout=60) as rpc:
        await rpc.call("anvil_mine", [hex(FINALITY_BLOCKS)])
    facts = await server_facts(server_dsn)
    async with fresh_database(server_dsn, "audit") as dsn:
        index_seconds = await run_discograph(rpc_url, dsn, info)
        settings = load_settings(
            {"RPC_URL": rpc_url, "DATABASE_URL": dsn, "LOG_LEVEL": "WARNING"}, env_file=None
        )
        started = time.perf_counter()
        report = await run_audit(
            settings,
            dsn,
            calls_per_batch=args.batch_size,
            in_flight=args.concurrency,
            progress=None if args.quiet else sys.stderr,
        )
        seconds = time.perf_counter() - started
    # BenchTransfers is followed as a plain ERC-721: enumerated from id 0 (never minted).
    if report.differences or report.tokens < info.minted_tokens:
        print(f"AUDIT WRONG: {len(report.differences)} differences, {report.tokens} tokens")
        return 1
    raw = await ceiling(rpc_url, info, report.block_hash, args.batch_size, args.concurrency)
    print(f"\nmachine: {os.cpu_count()} cores; {facts}")
    print(
        f"chain: BenchTransfers {info.contract}, {info.minted_tokens:,} tokens, audited at "
        f"block {report.block} (indexed in {index_seconds or 0:.1f}s)"
    )
    print(f"batches of {args.batch_size} eth_calls, {args.concurrency} in flight")
    print(f"\n{'run':<28}{'tokens':>9}{'seconds':>10}{'tokens/s':>11}")
    audited = report.tokens / seconds
    print(f"{'discograph audit':<28}{report.tokens:>9,}{seconds:>10.2f}{audited:>11,.0f}")
    rate = info.minted_tokens / raw
    print(f"{'ceiling (raw ownerOf)':<28}{info.minted_tokens:>9,}{raw:>10.2f}{rate:>11,.0f}")
    print(f"\nratio audit/ceiling: {audited / rate:.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.audit", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--events", type=int, default=100_000, help="bench chain events (100,000)")
    parser.add_argument("--per-block", type=int, default=100, help="events per block (100)")
    parser.add_argument("--batch-size", type=int, default=200, help="eth_calls per batch (200)")
    parser.add_argument("--concurrency", type=int, default=4, help="batches in flight (4)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="discograph-bench-audit-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        info = ensure_chain(args.events, args.per_block, workdir, rebuild=False)
        state, _ = cache_paths(args.events, args.per_block)
        anvil = start_anvil(workdir, extra_args=("--load-state", str(state)), timeout=120)
        stack.callback(anvil.stop)
        server_dsn = os.environ.get("BENCH_DATABASE_URL")
        if not server_dsn:
            postgres = start_postgres(workdir / "postgres", durable=False)
            stack.callback(postgres.stop)
            server_dsn = postgres.dsn("postgres")
        return asyncio.run(measure(anvil.rpc_url, server_dsn, info, args))
    return 1  # unreachable: ExitStack does not swallow exceptions


if __name__ == "__main__":
    raise SystemExit(main())
