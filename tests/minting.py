"""Helpers for minter tests: queue real requests, run the real minter, read the real chain."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from chain.album import grant_minter
from chain.rpc import RpcClient, to_int
from chain.signer import Signer
from db.catalog import NewAlbum, insert_album, insert_artist
from db.mints import insert_mint_request
from discograph.localchain import ANVIL_DEV_KEYS
from discograph.settings import Settings, load_settings
from minter.service import run_minter
from minter.tracking import ALBUM_MINTED_TOPIC


def minter_env(rpc_url: str, contract: str, **extra: str) -> dict[str, str]:
    env = {
        "RPC_URL": rpc_url,
        "ALBUM_CONTRACT": contract,
        "MINTER_PRIVATE_KEY": MINTER_KEY,
        "CONFIRMATIONS": "1",
        "POLL_INTERVAL": "0.05",
        "METRICS_PORT": "0",
        "LOG_LEVEL": "WARNING",
    }
    env.update(extra)
    return env


def minter_settings(rpc_url: str, contract: str, **extra: str) -> Settings:
    return load_settings(minter_env(rpc_url, contract, **extra), env_file=None)


# The minter signs with a key of its own, as in production (not the deployer's, dev key 0).
MINTER_KEY = ANVIL_DEV_KEYS[1]


async def grant_minter_key(rpc: RpcClient, admin: Signer, contract: str) -> Signer:
    """Grant MINTER_ROLE to MINTER_KEY's address; returns its signer."""
    signer = Signer(MINTER_KEY)
    await grant_minter(rpc, admin, contract, signer.address)
    return signer


@dataclass(frozen=True)
class Queued:
    mint_id: uuid.UUID
    album_id: uuid.UUID
    to: bytes


async def queue_mints(pool: asyncpg.Pool, count: int, seed: int = 7) -> list[Queued]:
    """`count` albums of one artist, each with a queued mint to its own random wallet."""
    rng = random.Random(seed)
    queued = []
    async with pool.acquire() as conn:
        artist = await insert_artist(conn, "Test Artist", None)
        for number in range(count):
            album_id = await insert_album(conn, NewAlbum(artist, f"Album {number}"))
            to = rng.randbytes(20)
            async with conn.transaction():
                row = await insert_mint_request(
                    conn,
                    album_id=album_id,
                    requester="artist-1",
                    to_address=to,
                    token_uri=f"ipfs://album/{album_id}.json",
                    idempotency_key=None,
                )
            queued.append(Queued(row["id"], album_id, to))
    return queued


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    what: str,
    *,
    timeout: float = 30.0,
    task: asyncio.Task[Any] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if task is not None and task.done():
            task.result()
            raise AssertionError(f"the minter stopped before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def status_counts(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT status, count(*) AS n FROM mint_requests GROUP BY status")
    return {row["status"]: int(row["n"]) for row in rows}


def all_in(
    pool: asyncpg.Pool, statuses: tuple[str, ...], count: int
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        counts = await status_counts(pool)
        return sum(counts.get(s, 0) for s in statuses) == count

    return check


@contextlib.asynccontextmanager
async def running_minter(settings: Settings, database_url: str) -> AsyncIterator[asyncio.Task[int]]:
    """The real minter, in process, for the duration of the block (stopped via its event)."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_minter(settings, database_url, stop=stop))
    try:
        yield task
    finally:
        stop.set()
        try:
            assert await asyncio.wait_for(task, 10) == 0
        finally:
            task.cancel()


async def mine_until_final(rpc: RpcClient) -> None:
    """anvil reports `finalized` 64 blocks below its head: mine past that."""
    await rpc.call("anvil_mine", [hex(70)])


async def album_minted_logs(rpc: RpcClient, contract: str) -> list[dict[str, Any]]:
    return list(
        await rpc.call(
            "eth_getLogs",
            [
                {
                    "fromBlock": "0x0",
                    "toBlock": "latest",
                    "address": contract,
                    "topics": [ALBUM_MINTED_TOPIC],
                }
            ],
        )
    )


async def mined_nonces(rpc: RpcClient, tx_hashes: list[bytes]) -> list[int]:
    """The nonce of each (mined) transaction, read from the node."""
    txs = await rpc.batch([("eth_getTransactionByHash", ["0x" + h.hex()]) for h in tx_hashes])
    return [to_int(tx["nonce"]) for tx in txs]


async def mint_events(pool: asyncpg.Pool) -> dict[str, list[str]]:
    """The `mint_status` outbox events of each mint id, statuses in seq order."""
    rows = await pool.fetch(
        "SELECT payload->>'mint_id' AS mint_id, payload->>'status' AS status FROM outbox"
        " WHERE kind = 'mint_status' ORDER BY seq"
    )
    events: dict[str, list[str]] = {}
    for row in rows:
        events.setdefault(row["mint_id"], []).append(row["status"])
    return events
