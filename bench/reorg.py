"""Tip reorg repair time: a depth-N reorg (anvil_reorg) under a live indexer, timed.

The clock starts when `anvil_reorg` is called (the indexer may see the new branch while anvil
still builds it) and stops when the indexer's checkpoint is the new head (number and hash):
anvil's own work, detection, the re-check against the nodes, walk back to the common
ancestor, rollback of the orphaned rows and re-application of the new branch, all included.
Run inside `bench.backfill` (after the discograph run, on its database) or alone:
`python -m bench.reorg` (a small chain of its own).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from chain.abi import deploy_data, encode_call, load_artifact
from chain.rpc import RpcClient
from chain.signer import Signer
from chain.transact import send_transaction
from db.engine import ensure_database, migrate, with_database
from discograph.embedded import start_postgres
from discograph.localchain import ANVIL_DEV_KEYS, start_anvil
from discograph.settings import load_settings
from indexer.progress import Progress
from indexer.service import run_indexer

SENDER = Signer(ANVIL_DEV_KEYS[0])


class _RepairLog(logging.Handler):
    """Collects the indexer's own rollback timings ("reorg repaired" log records)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "reorg repaired":
            self.seconds.append(float(record.__dict__["seconds"]))


def _emit_call(rng: random.Random, next_token: int, mints: int, moves: int) -> str:
    function = load_artifact("BenchTransfers").function("emitBlock")
    holders = [f"0x{rng.getrandbits(160):040x}" for _ in range(8)]
    mint_to = [rng.choice(holders) for _ in range(mints)]
    move_ids = [rng.randint(1, max(next_token - 1, 1)) for _ in range(moves)]
    move_to = [rng.choice(holders) for _ in range(moves)]
    return encode_call(function, mint_to, move_ids, move_to)


async def _next_token(rpc: RpcClient, contract: str) -> int:
    function = load_artifact("BenchTransfers").function("nextTokenId")
    answer = await rpc.call("eth_call", [{"to": contract, "data": encode_call(function)}, "latest"])
    return int(answer, 16)


async def _wait_synced(conn: asyncpg.Connection, rpc: RpcClient, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = await rpc.call("eth_getBlockByNumber", ["latest", False])
        row = await conn.fetchrow("SELECT block_number, block_hash FROM checkpoints")
        if row and "0x" + bytes(row["block_hash"]).hex() == latest["hash"]:
            return
        await asyncio.sleep(0.002)
    raise TimeoutError("the indexer did not reach the new head")


async def measure_tip_reorgs(
    rpc_url: str, dsn: str, contract: str, *, depth: int = 10, rounds: int = 5, seed: int = 7
) -> dict[str, Any]:
    """Run `rounds` reorgs of `depth` blocks (each block ~30 Transfers) under a live indexer."""
    rng = random.Random(seed)
    settings = load_settings(
        {
            "RPC_URL": rpc_url,
            "RPC_WS_URL": rpc_url.replace("http://", "ws://", 1),
            "EXTRA_CONTRACTS": contract,
            "CONFIRMATIONS": "0",
            "POLL_INTERVAL": "0.02",
            "METRICS_PORT": "0",
        },
        env_file=None,
    )
    repairs = _RepairLog()
    indexer_log = logging.getLogger("discograph.indexer")
    indexer_log.addHandler(repairs)
    previous_level = indexer_log.level
    indexer_log.setLevel(logging.INFO)
    indexer_log.propagate = False
    totals: list[float] = []
    calls: list[float] = []
    async with RpcClient(rpc_url, timeout=60) as rpc:
        task = asyncio.create_task(run_indexer(settings, dsn, progress=Progress(io.StringIO())))
        conn = await asyncpg.connect(dsn)
        try:
            await _wait_synced(conn, rpc, timeout=300)
            for _ in range(rounds):
                for _ in range(depth):
                    data = _emit_call(rng, await _next_token(rpc, contract), 20, 10)
                    await send_transaction(rpc, SENDER, to=contract, data=data)
                await _wait_synced(conn, rpc)
                token = await _next_token(rpc, contract)
                replacement = [
                    [
                        {
                            "from": SENDER.address,
                            "to": contract,
                            "data": _emit_call(rng, token - 20 * depth, 20, 10),
                            "gas": hex(3_000_000),
                        },
                        offset,
                    ]
                    for offset in range(depth)
                ]
                # The indexer may notice the new branch while anvil is still building it, so
                # the clock starts before the call (anvil's own time is reported apart).
                began = time.perf_counter()
                await rpc.call("anvil_reorg", [depth, replacement])
                calls.append(time.perf_counter() - began)
                await _wait_synced(conn, rpc)
                totals.append(time.perf_counter() - began)
        finally:
            await conn.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            indexer_log.removeHandler(repairs)
            indexer_log.setLevel(previous_level)
            indexer_log.propagate = True
    return {
        "depth": depth,
        "rounds": rounds,
        "total_ms": [round(s * 1000, 1) for s in totals],
        "anvil_ms": [round(s * 1000, 1) for s in calls],
        "rollback_ms": [round(s * 1000, 1) for s in repairs.seconds],
        "median_total_ms": round(statistics.median(totals) * 1000, 1),
        "max_total_ms": round(max(totals) * 1000, 1),
        # Once anvil had built the whole new branch: what the indexer still needed.
        "after_anvil_ms": [round((t - c) * 1000, 1) for t, c in zip(totals, calls, strict=True)],
        "max_after_anvil_ms": round(
            max(t - c for t, c in zip(totals, calls, strict=True)) * 1000, 1
        ),
    }


def report(result: dict[str, Any]) -> None:
    print(
        f"\ntip reorg of depth {result['depth']} ({result['rounds']} rounds, live indexer, "
        "newHeads + 20 ms polling)"
    )
    print(f"  anvil_reorg call → new branch indexed: {result['total_ms']} ms")
    print(f"  of which anvil building the new branch: {result['anvil_ms']} ms")
    print(f"  after anvil returned (the new branch complete): {result['after_anvil_ms']} ms")
    print(f"  ancestor search + rollback transaction: {result['rollback_ms']} ms")
    met = result["max_total_ms"] <= 250
    print(
        f"  call → indexed: median {result['median_total_ms']} ms, max {result['max_total_ms']} "
        f"ms; target ≤ 250 ms: {'met' if met else 'not met'} (informational)"
    )
    if not met and result["max_after_anvil_ms"] <= 250:
        print(
            "  (anvil's own reorg dominates here; measured from the moment the new branch was "
            f"complete the repair took ≤ {result['max_after_anvil_ms']} ms: met)"
        )


async def _standalone(rpc_url: str, server_dsn: str, depth: int, rounds: int) -> None:
    async with RpcClient(rpc_url) as rpc:
        receipt = await send_transaction(
            rpc, SENDER, to=None, data=deploy_data(load_artifact("BenchTransfers"))
        )
        contract = receipt["contractAddress"]
        rng = random.Random(1)
        for _ in range(100):  # some history, below and above anvil's finalized tag
            data = _emit_call(rng, await _next_token(rpc, contract), 30, 0)
            await send_transaction(rpc, SENDER, to=contract, data=data)
    dsn = with_database(server_dsn, "bench_reorg")
    await ensure_database(dsn)
    await migrate(dsn)
    report(await measure_tip_reorgs(rpc_url, dsn, contract, depth=depth, rounds=rounds))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reorg", description=__doc__)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="discograph-bench-reorg-"))
    anvil = start_anvil(workdir)
    postgres = start_postgres(workdir / "postgres", durable=False)
    try:
        asyncio.run(_standalone(anvil.rpc_url, postgres.dsn("postgres"), args.depth, args.rounds))
    finally:
        anvil.stop()
        postgres.stop()


if __name__ == "__main__":
    main()
