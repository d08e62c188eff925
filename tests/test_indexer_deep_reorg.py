"""A reorg deeper than REORG_WINDOW stops the indexer with the recovery command, which works.

REORG_WINDOW=8 keeps 9 block hashes; a fork 12 blocks deep (above anvil's finalized block,
which is head − 64) leaves no stored hash in common with the node, so the indexer must stop
rather than guess, and name `discograph reindex --from N`; running that repairs everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chain.rpc import RpcClient
from chain.signer import Signer
from discograph.localchain import Anvil
from discograph.settings import Settings
from indexer.errors import ReorgTooDeep
from indexer.progress import Progress
from indexer.service import run_indexer
from tests.conftest import REPO_ROOT
from tests.indexing import ChainDriver, index_to_head, indexer_settings, projection, wait_synced

SEED = 20261127
WINDOW, DEPTH = 8, 12
SETTINGS_VARS = {name.upper() for name in Settings.__struct_fields__}
REINDEX = re.compile(r"discograph reindex --from (\d+)")


async def discograph(
    *args: str, database_url: str, rpc_url: str, album: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARS}
    env.update(
        DATABASE_URL=database_url,
        RPC_URL=rpc_url,
        ALBUM_CONTRACT=album,
        CONFIRMATIONS="0",
        REORG_WINDOW=str(WINDOW),
        POLL_INTERVAL="0.05",
        METRICS_PORT="0",
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(REPO_ROOT),
    )
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "discograph.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _block_number(rpc: RpcClient, tag: str) -> int:
    block = await rpc.call("eth_getBlockByNumber", [tag, False])
    return int(block["number"], 16)


async def test_a_reorg_deeper_than_the_window_stops_and_reindex_from_the_named_block_repairs(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    database_url: str,
    second_database_url: str,
    tmp_path: Path,
) -> None:
    driver = ChainDriver(rpc, dev_signers, random.Random(SEED))
    (album,) = await driver.deploy(1)
    await driver.random_activity(10)
    await rpc.call("anvil_mine", ["0x50"])
    settings = indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album, REORG_WINDOW=str(WINDOW))
    task = asyncio.create_task(
        run_indexer(settings, database_url, progress=Progress(io.StringIO()))
    )
    try:
        fork_point = await wait_synced(database_url, rpc, task=task)
        snapshot = await rpc.call("evm_snapshot")
        saved = driver.snapshot()
        await driver.random_activity(DEPTH)  # one block each, followed by the indexer
        assert await wait_synced(database_url, rpc, task=task) == fork_point + DEPTH
        assert await _block_number(rpc, "finalized") < fork_point  # a reorg above finality

        assert await rpc.call("evm_revert", [snapshot]) is True
        driver.restore(saved)
        await driver.random_activity(DEPTH + 1)  # a different, longer branch
        with pytest.raises(ReorgTooDeep) as stopped:
            await asyncio.wait_for(asyncio.shield(task), 30)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ReorgTooDeep):
            await task
    message = str(stopped.value)
    assert f"REORG_WINDOW={WINDOW}" in message
    match = REINDEX.search(message)
    assert match, message
    reindex_from = int(match.group(1))
    assert reindex_from == stopped.value.suggested_from
    assert reindex_from <= fork_point + 1  # from there on, everything is rebuilt

    # The same situation met by the `discograph index` command: a clear error, no traceback.
    common = {"database_url": database_url, "rpc_url": anvil.rpc_url, "album": album}
    result = await discograph("index", cwd=tmp_path, **common)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "reorg deeper than the kept window" in result.stderr
    assert REINDEX.search(result.stderr), result.stderr

    result = await discograph(
        "reindex", "--from", str(reindex_from), "--until", "head", cwd=tmp_path, **common
    )
    assert result.returncode == 0, result.stderr
    await index_to_head(second_database_url, settings)
    repaired, fresh = await projection(database_url), await projection(second_database_url)
    assert repaired == fresh
    assert {(c.lower(), t) for c, t in driver.owners} == {
        ("0x" + bytes(row[0]).hex(), int(row[1])) for row in fresh["nfts"]
    }


async def test_the_deep_reorg_error_names_the_real_indexed_tip_when_the_new_branch_is_shorter(
    anvil: Anvil, rpc: RpcClient, dev_signers: list[Signer], database_url: str
) -> None:
    driver = ChainDriver(rpc, dev_signers, random.Random(SEED + 2))
    (album,) = await driver.deploy(1)
    await rpc.call("anvil_mine", ["0x50"])
    settings = indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album, REORG_WINDOW=str(WINDOW))
    task = asyncio.create_task(
        run_indexer(settings, database_url, progress=Progress(io.StringIO()))
    )
    try:
        fork_point = await wait_synced(database_url, rpc, task=task)
        snapshot = await rpc.call("evm_snapshot")
        await driver.random_activity(DEPTH)
        tip = await wait_synced(database_url, rpc, task=task)
        assert await rpc.call("evm_revert", [snapshot]) is True
        # A shorter branch: the node's head stays below our tip, inside the kept window.
        await rpc.call("anvil_mine", [hex(DEPTH - 4)])
        with pytest.raises(ReorgTooDeep) as stopped:
            await asyncio.wait_for(asyncio.shield(task), 30)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ReorgTooDeep):
            await task
    assert tip == fork_point + DEPTH
    assert f"the indexed tip {tip} " in str(stopped.value)


async def test_a_reorg_within_the_window_is_repaired_without_stopping(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    database_url: str,
    second_database_url: str,
) -> None:
    driver = ChainDriver(rpc, dev_signers, random.Random(SEED + 1))
    (album,) = await driver.deploy(1)
    await driver.random_activity(6)
    await rpc.call("anvil_mine", ["0x50"])
    settings = indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album, REORG_WINDOW=str(WINDOW))
    task = asyncio.create_task(
        run_indexer(settings, database_url, progress=Progress(io.StringIO()))
    )
    try:
        await wait_synced(database_url, rpc, task=task)
        snapshot = await rpc.call("evm_snapshot")
        saved = driver.snapshot()
        await driver.random_activity(WINDOW - 1)
        await wait_synced(database_url, rpc, task=task)
        assert await rpc.call("evm_revert", [snapshot]) is True
        driver.restore(saved)
        await driver.random_activity(WINDOW)
        await wait_synced(database_url, rpc, task=task)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await index_to_head(second_database_url, settings)
    assert await projection(database_url) == await projection(second_database_url)
