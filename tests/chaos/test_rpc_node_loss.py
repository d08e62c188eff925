"""Drill: the RPC node dies mid-run.

`RPC_URL` lists two nodes (two pass-through proxies named for what they are: fault injectors,
here injecting nothing but their own death, in front of one anvil). The first dies for good
mid-run: the indexer and the minter go on through the second. Then anvil itself is stopped
(SIGTERM: it saves its chain to its state file) and started again on the same port from that
state: both ride it out. The projection equals a fresh index; every mint is minted once."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

from chain.album import album_id_to_bytes32
from chain.rpc import RpcClient, to_int
from chain.signer import Signer
from db.engine import create_pool
from discograph.processes import free_port
from tests.chaos.drills import DrillLog, start_anvil_at, supervised_minter
from tests.faults import FaultyRpcServer
from tests.indexing import (
    ChainDriver,
    index_to_head,
    indexer_settings,
    live_indexer,
    projection,
    wait_synced,
)
from tests.minting import (
    album_minted_logs,
    all_in,
    grant_minter_key,
    mine_until_final,
    minter_settings,
    queue_mints,
    status_counts,
    wait_until,
)

DOWN = 2.0


@contextlib.asynccontextmanager
async def chain_client(url: str) -> AsyncIterator[RpcClient]:
    async with RpcClient(url) as client:
        yield client


async def test_rpc_node_dies_then_the_chain_restarts_from_its_state(
    database_url: str,
    second_database_url: str,
    dev_signers: list[Signer],
    service_dir: Path,
    drill_log: DrillLog,
) -> None:
    drill = drill_log
    port = free_port()
    state = service_dir / "anvil-state.json"
    anvil = start_anvil_at(service_dir, port, state)
    drill.did(f"started anvil on port {port} with state file {state.name}")
    pool = await create_pool(database_url, max_size=2)
    node_a = FaultyRpcServer(upstream=anvil.rpc_url)
    node_b = FaultyRpcServer(upstream=anvil.rpc_url)
    try:
        await node_a.start()
        await node_b.start()
        urls = f"{node_a.url},{node_b.url}"
        async with chain_client(anvil.rpc_url) as rpc:
            driver = ChainDriver(rpc, [dev_signers[0], *dev_signers[2:]], random.Random(13))
            (album,) = await driver.deploy(1)
            minter_key = await grant_minter_key(rpc, dev_signers[0], album)
            start_nonce = to_int(
                await rpc.call("eth_getTransactionCount", [minter_key.address, "latest"])
            )
            await driver.random_activity(10)
            await rpc.call("anvil_mine", ["0x50"])  # part of the history below `finalized`
            await driver.random_activity(4)
        settings = indexer_settings(urls, ALBUM_CONTRACT=album)
        queued = await queue_mints(pool, 3, seed=1)
        async with (
            live_indexer(database_url, settings) as indexer,
            supervised_minter(minter_settings(urls, album), database_url) as (minter, crashes),
        ):
            async with chain_client(anvil.rpc_url) as rpc:
                driver.rpc = rpc
                await wait_synced(database_url, rpc, task=indexer)
                # --- the first node dies for good, in the middle of activity -------------
                activity = asyncio.create_task(driver.random_activity(20))
                queued += await queue_mints(pool, 3, seed=2)
                await asyncio.sleep(0.3)
                before_a, before_b = len(node_a.requests), len(node_b.requests)
                await node_a.stop()
                drill.did(
                    f"killed node #0 mid-run (it had answered {before_a} requests, node #1"
                    f" {before_b}) while mints and transfers were under way"
                )
                await activity
                await driver.random_activity(4)
                head = await wait_synced(database_url, rpc, task=indexer, timeout=30)
                served_b = len(node_b.requests) - before_b
                assert served_b > 0
                drill.checked(
                    f"with node #0 dead the indexer synced to block {head} through node #1"
                    f" ({served_b} requests since)"
                )
                latest = await rpc.call("eth_getBlockByNumber", ["latest", False])

            # --- the chain itself stops and comes back with its state ----------------------
            await asyncio.to_thread(anvil.stop)  # SIGTERM: anvil saves its state and exits
            drill.did(f"stopped anvil (SIGTERM) at block {to_int(latest['number'])}")
            queued += await queue_mints(pool, 3, seed=3)  # the minter cannot send them yet
            await asyncio.sleep(DOWN)
            waiting = (await status_counts(pool)).get("queued", 0)
            anvil = await asyncio.to_thread(start_anvil_at, service_dir, port, state)
            drill.did(
                f"started anvil again on port {port} from its state file ({waiting} mints"
                " queued meanwhile)"
            )
            async with chain_client(anvil.rpc_url) as rpc:
                driver.rpc = rpc
                same = await rpc.call("eth_getBlockByNumber", [latest["number"], False])
                assert same is not None
                assert same["hash"] == latest["hash"], (latest, same)
                await driver.random_activity(6)
                head = await wait_synced(database_url, rpc, task=indexer, timeout=30)
                drill.checked(
                    f"anvil came back with the same chain (block {to_int(latest['number'])}"
                    f" hash unchanged); the indexer rode it out (no restart) and synced to"
                    f" block {head}"
                )
                await wait_until(
                    all_in(pool, ("mined", "confirmed", "finalized"), len(queued)),
                    "every mint mined",
                    task=minter,
                    timeout=30,
                )
                await mine_until_final(rpc)
                await wait_until(
                    all_in(pool, ("finalized",), len(queued)),
                    "every mint finalized",
                    task=minter,
                    timeout=30,
                )
                await wait_synced(database_url, rpc, task=indexer, timeout=30)
                rows = await pool.fetch("SELECT nonce FROM mint_requests")
                nonces = sorted(int(row["nonce"]) for row in rows)
                logs = await album_minted_logs(rpc, album)
                pending = to_int(
                    await rpc.call("eth_getTransactionCount", [minter_key.address, "pending"])
                )
        assert nonces == list(range(start_nonce, start_nonce + len(queued))), nonces
        ours = {"0x" + album_id_to_bytes32(q.album_id).hex() for q in queued}
        minted = [entry["topics"][2] for entry in logs if entry["topics"][2] in ours]
        assert sorted(minted) == sorted(ours), "an album minted twice or not at all"
        assert pending == start_nonce + len(queued)
        assert not crashes.crashes, crashes.crashes
        drill.checked(
            f"{len(queued)} mints (queued before, during and right before the outages) all"
            f" finalized, each once, nonces {nonces[0]}..{nonces[-1]} without gap; the minter"
            " needed no restart"
        )
        await index_to_head(
            second_database_url, indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album)
        )
        live, fresh = await projection(database_url), await projection(second_database_url)
        assert live == fresh
        drill.checked(
            f"projection equals a fresh index: {len(fresh['transfers'])} transfers,"
            f" {len(fresh['nfts'])} NFTs"
        )
    finally:
        await node_a.stop()
        await node_b.stop()
        await pool.close()
        anvil.stop()
