"""Crash safety: `discograph index` SIGKILLed at random moments resumes exactly once.

A chain of ~20,000 Transfer events (BenchTransfers, 250 blocks of 80) plus AlbumNFT activity is
indexed by a `discograph index` subprocess that is killed with SIGKILL over and over: during the
backfill (mid-fetch, mid-COPY, between batches) and while it follows the tip as new blocks
arrive; once a reorg happens while it is down. After every kill the database must hold exactly
what a committed prefix of the chain holds (one transaction per batch); at the end the projection
equals a fresh index of the same chain.

The node is reached through a proxy that refuses `eth_getLogs` ranges wider than a few blocks,
as hosted providers do: the backfill then takes ~60 small batches instead of one big one, so
kills can land between its commits.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web
from eth_utils.address import to_checksum_address

from chain.abi import deploy_data, encode_call, load_artifact
from chain.rpc import RpcClient, to_int
from chain.signer import Signer
from chain.transact import send_transaction, wait_for_receipt
from discograph.localchain import ANVIL_CHAIN_ID, Anvil
from discograph.settings import Settings
from indexer.decode import TRANSFER_TOPIC
from tests.conftest import REPO_ROOT
from tests.faults import Fault, FaultyRpcServer
from tests.indexing import ChainDriver, index_to_head, indexer_settings, projection

SEED = int(os.environ.get("DISCOGRAPH_CRASH_SEED", "20261126"))
BENCH_BLOCKS, PER_BLOCK, HOLDERS = 250, 80, 64
MAX_LOG_RANGE = 4  # blocks per eth_getLogs the proxy accepts
BACKFILL_KILLS, TIP_KILLS = 12, 10
SETTINGS_VARS = {name.upper() for name in Settings.__struct_fields__}


# --- the chain -----------------------------------------------------------------------------------


async def build_bench_chain(rpc: RpcClient, signer: Signer, rng: random.Random) -> str:
    """Deploy BenchTransfers and mine BENCH_BLOCKS blocks of PER_BLOCK transfers (70 % mints)."""
    artifact = load_artifact("BenchTransfers")
    receipt = await send_transaction(rpc, signer, to=None, data=deploy_data(artifact))
    contract = to_checksum_address(receipt["contractAddress"])
    emit_block = artifact.function("emitBlock")
    holders = [to_checksum_address(rng.randbytes(20)) for _ in range(HOLDERS)]
    nonce = to_int(await rpc.call("eth_getTransactionCount", [signer.address, "pending"]))
    minted, tx_hash = 0, ""
    for offset in range(BENCH_BLOCKS):
        mints = PER_BLOCK * 7 // 10
        moves = PER_BLOCK - mints
        data = encode_call(
            emit_block,
            [rng.choice(holders) for _ in range(mints)],
            [rng.randint(1, minted + mints) for _ in range(moves)],
            [rng.choice(holders) for _ in range(moves)],
        )
        # Explicit nonce, gas and fees: no estimate round trips, one block per transaction.
        tx = {
            "type": 2,
            "chainId": ANVIL_CHAIN_ID,
            "nonce": nonce + offset,
            "gas": 60_000 + 30_000 * mints + 20_000 * moves,
            "maxFeePerGas": 10 * 10**9,
            "maxPriorityFeePerGas": 0,
            "value": 0,
            "data": data,
            "to": contract,
        }
        raw, tx_hash = signer.sign_transaction(tx)
        await rpc.call("eth_sendRawTransaction", [raw])
        minted += mints
    receipt = await wait_for_receipt(rpc, tx_hash, timeout=30)
    assert to_int(receipt["status"]) == 1
    return contract


def block_range_limit(max_blocks: int) -> Fault:
    """A node that refuses `eth_getLogs` over more than `max_blocks` blocks (-32005)."""

    def too_wide(call: dict[str, Any]) -> bool:
        if call.get("method") != "eth_getLogs":
            return False
        query = (call.get("params") or [{}])[0]
        if "fromBlock" not in query:
            return False  # by block hash: one block
        return int(query["toBlock"], 16) - int(query["fromBlock"], 16) + 1 > max_blocks

    async def respond(
        server: FaultyRpcServer, request: web.Request, body: bytes
    ) -> web.StreamResponse:
        payload = json.loads(body)
        calls = payload if isinstance(payload, list) else [payload]
        refused = {i for i, call in enumerate(calls) if too_wide(call)}
        passed = [call for i, call in enumerate(calls) if i not in refused]
        replies: dict[Any, Any] = {}
        if passed:
            status, raw = await server.forward(json.dumps(passed).encode())
            if status != 200:
                return web.Response(status=status, body=raw, content_type="application/json")
            replies = {reply.get("id"): reply for reply in json.loads(raw)}
        out = [
            {
                "jsonrpc": "2.0",
                "id": call.get("id"),
                "error": {"code": -32005, "message": f"query exceeds {max_blocks} blocks"},
            }
            if i in refused
            else replies[call.get("id")]
            for i, call in enumerate(calls)
        ]
        return web.json_response(out if isinstance(payload, list) else out[0])

    return Fault(f"range_limit_{max_blocks}", respond)


# --- the indexer process -------------------------------------------------------------------------


@dataclass
class IndexerProcess:
    """`discograph index` as a user runs it, started and SIGKILLed by the test."""

    env: dict[str, str]
    cwd: Path
    runs: int = 0
    popen: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def start(self, *args: str) -> None:
        assert self.popen is None
        self.runs += 1
        self.log = self.cwd / f"indexer-{self.runs}.log"
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "discograph.cli", "index", *args],
                env=self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """SIGKILL: no `finally`, no rollback, no lock release but the kernel's."""
        popen, self.popen = self.popen, None
        if popen is not None:
            popen.send_signal(signal.SIGKILL)
            popen.wait(10)

    def exited(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""

    async def run_to_completion(self, *args: str, timeout: float = 60.0) -> int:
        self.start(*args)
        deadline = time.monotonic() + timeout
        while (code := self.exited()) is None:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"indexer did not finish in {timeout}s:\n{self.output()}")
            await asyncio.sleep(0.05)
        self.popen = None
        return code


def subprocess_env(database_url: str, rpc_url: str, album: str, bench: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARS}
    env.update(
        DATABASE_URL=database_url,
        RPC_URL=rpc_url,
        ALBUM_CONTRACT=album,
        EXTRA_CONTRACTS=bench,
        CONFIRMATIONS="0",
        POLL_INTERVAL="0.05",
        METRICS_PORT="0",
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(REPO_ROOT),
    )
    return env


# --- what must hold after every kill -------------------------------------------------------------


@dataclass
class Observed:
    checkpoint: int
    reorg_at: Any
    transfers: int


@dataclass
class Invariants:
    """Checks the database after each crash against the node and the previous crash."""

    database_url: str
    rpc: RpcClient
    contracts: list[str]
    history: list[Observed] = field(default_factory=list)

    async def checkpoint(self) -> int:
        conn = await asyncpg.connect(self.database_url)
        try:
            value = await conn.fetchval("SELECT block_number FROM checkpoints")
        finally:
            await conn.close()
        return -1 if value is None else int(value)

    async def transfers_on_chain(self, last: int) -> int:
        if last < 0:
            return 0
        logs = await self.rpc.call(
            "eth_getLogs",
            [
                {
                    "fromBlock": "0x0",
                    "toBlock": hex(last),
                    "address": self.contracts,
                    "topics": [TRANSFER_TOPIC],
                }
            ],
        )
        return len(logs)

    async def check(self, label: str) -> Observed:
        conn = await asyncpg.connect(self.database_url)
        try:
            row = await conn.fetchrow("SELECT block_number, last_reorg_at FROM checkpoints")
            counts = await conn.fetchrow(
                """
                SELECT count(*) AS total,
                       count(DISTINCT (block_number, log_index)) AS distinct_keys,
                       coalesce(max(block_number), -1) AS highest
                FROM transfers
                """
            )
            tokens = await conn.fetchval(
                "SELECT count(*) FROM (SELECT DISTINCT contract, token_id FROM transfers) t"
            )
            nfts = await conn.fetchval("SELECT count(*) FROM nfts")
            wrong_owners = await conn.fetchval(
                """
                SELECT count(*) FROM nfts n
                JOIN (SELECT DISTINCT ON (contract, token_id) contract, token_id, to_address
                      FROM transfers
                      ORDER BY contract, token_id, block_number DESC, log_index DESC) last
                  ON last.contract = n.contract AND last.token_id = n.token_id
                WHERE n.owner <> last.to_address
                """
            )
            events_above = await conn.fetchval(
                "SELECT count(*) FROM token_events WHERE block_number > $1",
                -1 if row is None else row["block_number"],
            )
        finally:
            await conn.close()
        checkpoint = -1 if row is None else int(row["block_number"])
        reorg_at = None if row is None else row["last_reorg_at"]
        where = f"after {label}"
        assert counts["total"] == counts["distinct_keys"], f"duplicate transfers {where}"
        # Rows and checkpoint commit together: nothing above the checkpoint, nothing missing.
        assert counts["highest"] <= checkpoint, f"transfers above the checkpoint {where}"
        assert events_above == 0, f"token events above the checkpoint {where}"
        assert counts["total"] == await self.transfers_on_chain(checkpoint), (
            f"transfers up to block {checkpoint} differ from the chain's {where}"
        )
        assert nfts == tokens, f"nfts do not match the transferred tokens {where}"
        assert wrong_owners == 0, f"an owner is not its last transfer's receiver {where}"
        if self.history:
            previous = self.history[-1]
            if checkpoint < previous.checkpoint:
                went_back = f"checkpoint went back {previous.checkpoint} -> {checkpoint}"
                assert reorg_at is not None, f"{went_back} without a reorg {where}"
                assert reorg_at != previous.reorg_at, f"{went_back} without a new reorg {where}"
        observed = Observed(checkpoint, reorg_at, int(counts["total"]))
        self.history.append(observed)
        return observed


# --- the test ------------------------------------------------------------------------------------


async def _wait_checkpoint(invariants: Invariants, at_least: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await invariants.checkpoint() >= at_least:
            return True
        await asyncio.sleep(0.01)
    return False


async def _head(rpc: RpcClient) -> int:
    return to_int(await rpc.call("eth_blockNumber"))


async def _keep_sending(driver: ChainDriver, stop: asyncio.Event) -> int:
    sent = 0
    while not stop.is_set():
        await driver.random_activity(1)
        sent += 1
        await asyncio.sleep(driver.rng.uniform(0.02, 0.15))
    return sent


async def test_sigkill_at_random_moments_never_duplicates_or_loses_a_transfer(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    database_url: str,
    second_database_url: str,
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    driver = ChainDriver(rpc, dev_signers[:4], random.Random(SEED + 1))
    (album,) = await driver.deploy(1)
    await driver.random_activity(12)
    bench = await build_bench_chain(rpc, dev_signers[4], rng)
    await driver.random_activity(12)
    head = await _head(rpc)
    backfill_target = head - 64  # anvil's finalized tag: the backfill goes up to there
    assert backfill_target > 200

    proxy = FaultyRpcServer(upstream=anvil.rpc_url).start_in_thread()
    process = IndexerProcess(subprocess_env(database_url, proxy.url, album, bench), tmp_path)
    invariants = Invariants(database_url, rpc, [album, bench])
    landed: Counter[str] = Counter()
    moments: list[int] = []  # the checkpoint at each kill
    try:
        proxy.chaos(1.0, [block_range_limit(MAX_LOG_RANGE)], seed=SEED, methods={"eth_getLogs"})

        # Backfill: kill mid-startup, mid-fetch, mid-commit and between commits.
        for kill in range(BACKFILL_KILLS):
            before = await invariants.checkpoint()
            process.start()
            # Small random steps, so the kills spread over the whole backfill; every fourth
            # kill comes after a random delay instead, often before the first commit.
            threshold = min(before + rng.randint(1, 12), backfill_target - 10)
            early = kill % 4 == 0
            reached = await _wait_checkpoint(
                invariants, threshold, timeout=rng.uniform(0.1, 1.5) if early else 15.0
            )
            assert reached or early, process.output()
            await asyncio.sleep(rng.uniform(0.0, 0.03))
            at_kill = await invariants.checkpoint()
            process.kill()
            moments.append(at_kill)
            landed["backfill" if at_kill < backfill_target else "tip"] += 1
            await invariants.check(f"backfill kill {kill} (checkpoint {at_kill})")

        # Tip: blocks keep coming while the indexer is killed again and again.
        stop = asyncio.Event()
        sender = asyncio.create_task(_keep_sending(driver, stop))
        try:
            for kill in range(TIP_KILLS):
                process.start()
                await asyncio.sleep(rng.uniform(0.6, 2.2))
                at_kill = await invariants.checkpoint()
                process.kill()
                moments.append(at_kill)
                landed["backfill" if at_kill < backfill_target else "tip"] += 1
                await invariants.check(f"tip kill {kill} (checkpoint {at_kill})")
        finally:
            stop.set()
            sent = await sender
        assert sent >= TIP_KILLS

        # A reorg while the indexer is down: it must notice on restart and repair.
        process.start()
        head = await _head(rpc)
        assert await _wait_checkpoint(invariants, head, timeout=20), process.output()
        fork = await rpc.call("evm_snapshot")
        saved = driver.snapshot()
        await driver.random_activity(4)
        assert await _wait_checkpoint(invariants, head + 4, timeout=20), process.output()
        process.kill()
        moments.append(head + 4)
        landed["tip"] += 1
        orphaned_tip = await invariants.check("the kill before the reorg")
        assert await rpc.call("evm_revert", [fork]) is True
        driver.restore(saved)
        await driver.random_activity(6)
        process.start()
        assert await _wait_checkpoint(invariants, head + 6, timeout=20), process.output()
        moments.append(await invariants.checkpoint())
        process.kill()
        landed["tip"] += 1
        after_reorg = await invariants.check("the restart after a reorg while down")
        assert after_reorg.reorg_at is not None
        assert after_reorg.reorg_at != orphaned_tip.reorg_at

        # Finally let it finish on its own.
        await driver.random_activity(3)
        code = await process.run_to_completion("--until", "head")
        assert code == 0, process.output()
        assert "Traceback" not in process.output()
        final = await invariants.check("the last, uninterrupted run")
        assert final.checkpoint == await _head(rpc)
    finally:
        process.kill()
        proxy.stop_thread()

    fresh = indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album, EXTRA_CONTRACTS=bench)
    await index_to_head(second_database_url, fresh)
    live, expected = await projection(database_url), await projection(second_database_url)
    assert len(expected["transfers"]) > BENCH_BLOCKS * PER_BLOCK
    assert live == expected
    conn = await asyncpg.connect(database_url)
    try:
        removed = await conn.fetchval("SELECT count(*) FROM outbox WHERE kind = 'removed'")
    finally:
        await conn.close()
    assert removed > 0  # the orphaned branch's events were announced as removed
    print(
        f"\nkills: {dict(landed)} over {process.runs} runs (backfill target {backfill_target}); "
        f"checkpoint at each kill: {moments}"
    )
    assert landed["backfill"] >= 8
    assert landed["tip"] >= 8
