"""`discograph audit`: the projection against ownerOf/tokenURI at the finalized block (real anvil
and Postgres; the command runs as a user runs it)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest_asyncio

from chain.rpc import RpcClient
from chain.signer import Signer
from db.audits import TokenState
from discograph.audit import compare
from discograph.audit_chain import ChainToken
from discograph.localchain import Anvil
from tests.conftest import REPO_ROOT
from tests.indexing import ChainDriver, index_to_head, indexer_settings

CHAIN_ID = 31337
# anvil's `finalized` block is head − 64: this many empty blocks make every earlier one final.
FINALITY_BLOCKS = 70
ELSEWHERE = bytes.fromhex("11" * 20)


@dataclass
class Indexed:
    anvil: Anvil
    driver: ChainDriver
    album: str
    database_url: str

    @property
    def contract(self) -> bytes:
        return bytes.fromhex(self.album[2:])

    def tokens(self) -> list[int]:
        return sorted(token for (_, token) in self.driver.owners)


async def audit(indexed: Indexed, *args: str) -> subprocess.CompletedProcess[str]:
    return await run_cli(
        args, {"DATABASE_URL": indexed.database_url, "RPC_URL": indexed.anvil.rpc_url}
    )


async def run_cli(args: Sequence[str], extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "RPC_URL")}
    env |= {"PYTHONPATH": str(REPO_ROOT), "LOG_LEVEL": "WARNING", "METRICS_PORT": "0", **extra}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "discograph.cli", "audit", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest_asyncio.fixture
async def indexed(
    anvil: Anvil, rpc: RpcClient, dev_signers: list[Signer], database_url: str
) -> Indexed:
    """An album contract with mints, transfers and URI changes, all final, indexed to head."""
    driver = ChainDriver(rpc, dev_signers[:4], random.Random(12))
    (album,) = await driver.deploy(1)
    for _ in range(6):
        await driver.mint(album)
    await driver.random_activity(8, metadata=0.3)
    await rpc.call("anvil_mine", [hex(FINALITY_BLOCKS)])
    await index_to_head(database_url, indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album))
    return Indexed(anvil, driver, album, database_url)


async def test_a_clean_index_audits_clean_and_status_shows_the_run(
    indexed: Indexed, rpc: RpcClient, api_client: Any
) -> None:
    result = await audit(indexed, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["differences"] == []
    assert report["tokens"] == len(indexed.tokens())
    assert report["contracts"][0]["enumerated"] is True
    head = int(await rpc.call("eth_blockNumber"), 16)
    assert report["block"] == head - 64
    assert "tokens/s" in result.stderr  # the progress line

    status = (await api_client.get("/status")).json()
    assert status["last_audit"]["differences"] == 0
    assert status["last_audit"]["finalized_block"] == report["block"]
    assert status["last_audit"]["tokens"] == report["tokens"]
    metrics = (await api_client.get("/metrics")).text
    assert "discograph_audit_differences 0.0" in metrics
    stamp = next(
        line.split()[1]
        for line in metrics.splitlines()
        if line.startswith("discograph_audit_last_run_timestamp_seconds ")
    )
    assert abs(float(stamp) - _epoch(status["last_audit"]["at"])) < 1


async def test_a_corrupted_owner_a_missing_and_an_extra_token_are_each_reported(
    indexed: Indexed, api_client: Any
) -> None:
    corrupted, deleted = indexed.tokens()[:2]
    conn = await asyncpg.connect(indexed.database_url)
    try:
        await conn.execute(
            "UPDATE nfts SET owner = $1 WHERE contract = $2 AND token_id = $3",
            ELSEWHERE,
            indexed.contract,
            corrupted,
        )
        await conn.execute(
            "DELETE FROM nfts WHERE contract = $1 AND token_id = $2", indexed.contract, deleted
        )
        await conn.execute(
            "INSERT INTO nfts (chain_id, contract, token_id, owner, minted_block, minted_tx,"
            " updated_block) VALUES ($1, $2, 999, $3, 1, $4, 1)",
            CHAIN_ID,
            indexed.contract,
            ELSEWHERE,
            bytes(32),
        )
    finally:
        await conn.close()

    result = await audit(indexed, "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    found = {(d["kind"], d["token_id"]) for d in report["differences"]}
    assert found == {("owner", str(corrupted)), ("missing", str(deleted)), ("extra", "999")}
    assert report["counts"] == {"owner": 1, "token_uri": 0, "missing": 1, "extra": 1}
    owner = next(d for d in report["differences"] if d["kind"] == "owner")
    assert owner["chain"].lower() == indexed.driver.owners[(indexed.album, corrupted)]
    assert owner["projection"].lower() == "0x" + ELSEWHERE.hex()

    human = await audit(indexed, "--quiet")
    assert human.returncode == 1
    assert "differences  3 (owner 1, token_uri 0, missing 1, extra 1)" in human.stdout
    assert human.stderr == ""
    status = (await api_client.get("/status")).json()
    assert status["last_audit"]["differences"] == 3
    assert "discograph_audit_differences 3.0" in (await api_client.get("/metrics")).text


async def test_a_wrong_token_uri_is_reported(indexed: Indexed) -> None:
    token = indexed.tokens()[-1]
    conn = await asyncpg.connect(indexed.database_url)
    try:
        await conn.execute(
            "UPDATE nfts SET token_uri = 'ipfs://wrong' WHERE contract = $1 AND token_id = $2",
            indexed.contract,
            token,
        )
    finally:
        await conn.close()
    result = await audit(indexed, "--json")
    assert result.returncode == 1
    (difference,) = json.loads(result.stdout)["differences"]
    assert (difference["kind"], difference["token_id"]) == ("token_uri", str(token))
    assert difference["projection"] == "ipfs://wrong"
    assert difference["chain"].startswith("ipfs://test/")


async def test_changes_after_the_finalized_block_are_not_differences(
    indexed: Indexed, rpc: RpcClient
) -> None:
    """The projection moves on past the finalized block (a transfer, a new mint, a new URI):
    the audit compares each token as of the finalized block, from the history tables."""
    moved = indexed.tokens()[0]
    await indexed.driver.transfer((indexed.album, moved))
    await indexed.driver.set_uri((indexed.album, moved))
    await indexed.driver.mint(indexed.album)
    await index_to_head(
        indexed.database_url, indexer_settings(indexed.anvil.rpc_url, ALBUM_CONTRACT=indexed.album)
    )
    result = await audit(indexed, "--json")
    assert result.returncode == 0, result.stdout
    assert json.loads(result.stdout)["tokens"] == len(indexed.tokens()) - 1


async def test_usage_and_configuration_errors_exit_2(database_url: str) -> None:
    assert (await run_cli(["--batch-size", "1"], {})).returncode == 2
    assert (await run_cli(["--concurrency", "lots"], {})).returncode == 2
    no_node = await run_cli([], {"DATABASE_URL": database_url})
    assert no_node.returncode == 2
    assert "RPC_URL" in no_node.stderr
    assert "Traceback" not in no_node.stderr


def test_a_burned_token_agrees_with_an_absent_one_and_uri_checks_are_per_kind() -> None:
    contract = bytes(20)
    owner = bytes.fromhex("22" * 20)
    projected = {1: TokenState(bytes(20), "a"), 2: TokenState(owner, "a")}
    onchain = {1: ChainToken(None, None), 2: ChainToken(owner, "b")}
    assert compare(contract, projected, onchain, check_uri=False) == []
    (difference,) = compare(contract, projected, onchain, check_uri=True)
    assert (difference.kind, difference.projection, difference.chain) == ("token_uri", "a", "b")


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def test_an_unreachable_node_exits_3_and_records_nothing(database_url: str) -> None:
    from discograph.processes import free_port

    url = f"http://127.0.0.1:{free_port()}"
    result = await run_cli(["--quiet"], {"DATABASE_URL": database_url, "RPC_URL": url})
    assert result.returncode == 3, result.stderr
    assert "audit not completed" in result.stderr
    assert "Traceback" not in result.stderr
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM audit_runs") == 0
    finally:
        await conn.close()


async def test_every_api_process_exports_the_last_audit_without_being_asked_for_status(
    database_url: str,
) -> None:
    """The stale-audit alert reads the gauges: they must not wait for a `/status` request."""
    from datetime import UTC, datetime

    import asyncpg
    from litestar.testing import AsyncTestClient

    from api.app import create_app
    from api.routes import status
    from db.audits import AuditRun, record_run
    from discograph.settings import load_settings
    from tests.conftest import api_env

    at = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    conn = await asyncpg.connect(database_url)
    try:
        await record_run(conn, AuditRun(31337, at, 100, b"\x01" * 32, 42, 3, {"owner": 3}, 1.5))
    finally:
        await conn.close()
    status.AUDIT_LAST_RUN.set(0)
    status.AUDIT_DIFFERENCES.set(0)
    settings = load_settings(api_env(database_url), env_file=None)
    async with AsyncTestClient(app=create_app(settings, database_url)) as client:

        def gauge(text: str, name: str) -> float:
            (line,) = [x for x in text.splitlines() if x.startswith(f"{name} ")]
            return float(line.split()[1])

        for _ in range(50):
            metrics = (await client.get("/metrics")).text
            if gauge(metrics, "discograph_audit_last_run_timestamp_seconds") == at.timestamp():
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the audit gauges were not refreshed at start-up")
        assert gauge(metrics, "discograph_audit_differences") == 3
