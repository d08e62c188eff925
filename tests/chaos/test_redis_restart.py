"""Drill: Redis (Valkey) stopped for ~3 s under read load, then started again in place.

Reads fall back to Postgres (200, correct and fresh, no 5xx), the per-IP read limit fails open
while Redis is away (the documented direction, api/ratelimit.py) and is enforced again once it
is back, and the response cache works again without ever serving a stale answer."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDict

from api.app import create_app
from chain.rpc import RpcClient
from chain.signer import Signer
from discograph.embedded import start_valkey
from discograph.localchain import Anvil
from discograph.settings import load_settings
from tests.chaos.drills import DrillLog, ReadLoad, rate, running
from tests.conftest import api_env, serve_api
from tests.indexing import ChainDriver, indexer_settings, live_indexer, wait_synced

LIMIT = 20  # reads per minute per client address: tiny, so the drill can reach it
OUTAGE = 3.0


async def get(http: aiohttp.ClientSession, path: str, ip: str) -> tuple[int, CIMultiDict[str], Any]:
    async with http.get(path, headers={"X-Forwarded-For": ip}) as response:
        headers = CIMultiDict(response.headers)  # case-insensitive, as HTTP headers are
        return response.status, headers, await response.json(content_type=None)


async def burst(http: aiohttp.ClientSession, path: str, ip: str, count: int) -> list[int]:
    """`count` reads from one client address, one after the other; their statuses."""
    return [(await get(http, path, ip))[0] for _ in range(count)]


async def test_redis_restarted_under_read_load(
    database_url: str,
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    service_dir: Path,
    drill_log: DrillLog,
) -> None:
    drill = drill_log
    driver = ChainDriver(rpc, dev_signers, random.Random(12))
    (album,) = await driver.deploy(1)
    await driver.random_activity(8)
    contract, token_id = sorted(driver.owners)[0]
    nft = f"/nfts/{contract}/{token_id}"
    valkey = start_valkey(service_dir / "valkey")
    port = valkey.port
    drill.did(f"started an own Valkey on port {port}")
    settings = load_settings(
        api_env(database_url, REDIS_URL=valkey.url(), RATE_LIMIT_READS=f"{LIMIT}/minute"),
        env_file=None,
    )
    app = create_app(settings, database_url, cache_namespace=f"drill:{uuid.uuid4().hex}")
    indexing = indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album)
    try:
        async with live_indexer(database_url, indexing) as task:
            await wait_synced(database_url, rpc, task=task)
            with serve_api(app) as api:
                load = ReadLoad(
                    api,
                    [
                        "/albums?limit=5",
                        nft,
                        "/transfers?limit=5",
                        f"/contracts/{contract}/holders?limit=5",
                    ],
                    spread_ips=True,
                )
                async with aiohttp.ClientSession(api) as http, running(load, workers=3):
                    # --- Redis up: the limit holds, the cache answers ------------------------
                    statuses = await burst(http, nft, "10.1.0.1", LIMIT + 5)
                    assert statuses.count(429) == 5, statuses
                    hit_before = await until_hit(http, "/transfers?limit=7")
                    drill.did(
                        f"with Redis up: the limit ({LIMIT}/minute) refused reads 21..25 of one"
                        f" client; a repeated read was a cache hit after {hit_before} reads"
                    )
                    await asyncio.sleep(1.5)

                    # --- Redis down ------------------------------------------------------------
                    load.phase = "down"
                    began = drill.t
                    await asyncio.to_thread(valkey.stop)
                    drill.did(
                        "stopped Valkey under read load"
                        f" ({rate(len(load.of('before')), began)} reads)"
                    )
                    open_statuses = await burst(http, nft, "10.1.0.2", 2 * LIMIT)
                    new_owner = next(
                        s
                        for s in dev_signers
                        if s.address.lower() != driver.owners[(contract, token_id)]
                    )
                    await driver.transfer((contract, token_id), new_owner)
                    head = await wait_synced(database_url, rpc, task=task)
                    status, headers, body = await get(http, f"{nft}?min_block={head}", "10.1.0.3")
                    assert status == 200, body
                    assert body["owner"].lower() == new_owner.address.lower(), body
                    assert headers.get("X-Cache") != "hit"
                    _, _, health = await get(http, "/health/ready", "10.1.0.3")
                    await asyncio.sleep(max(0.0, OUTAGE - (drill.t - began)))

                    # --- Redis back --------------------------------------------------------------
                    load.phase = "restarting"
                    valkey = await asyncio.to_thread(
                        start_valkey, service_dir / "valkey", port=port
                    )
                    load.phase = "after"
                    drill.did(f"started Valkey again on port {port} (empty: it keeps nothing)")
                    enforced_after = await until_limited(http, nft, "10.1.0.4")
                    hit_after = await until_hit(http, "/transfers?limit=9")
                    # Never stale: a cached answer, then a new block changes it.
                    cached_path = f"{nft}?finality=latest"
                    await until_hit(http, cached_path)
                    _, _, before = await get(http, cached_path, "10.1.1.1")
                    owner_before = before["owner"].lower()
                    newest = next(s for s in dev_signers if s.address.lower() != owner_before)
                    await driver.transfer((contract, token_id), newest)
                    head = await wait_synced(database_url, rpc, task=task)
                    status, headers, after = await get(
                        http, f"{cached_path}&min_block={head}", "10.1.1.2"
                    )
                    assert status == 200, after
                    assert after["owner"].lower() == newest.address.lower(), (before, after)
                    await asyncio.sleep(1.0)
    finally:
        valkey.stop()

    assert not load.violations, load.violations[:10]
    everything = load.count()
    assert all(status < 500 for status in everything), everything
    assert set(everything) == {200}, everything
    down = load.count("down") + load.count("restarting")
    drill.checked(
        f"while Redis was down: {down.total()} reads, all 200 from Postgres (slowest"
        f" {max(load.slowest('down'), load.slowest('restarting')):.2f}s), 5xx: 0; a transfer"
        " made meanwhile was read back at once (fresh, not from cache);"
        f" /health/ready: {health.get('status')}"
    )
    assert health["status"] == "degraded", health
    assert 429 not in open_statuses, open_statuses
    drill.checked(
        f"rate limit failed open: {len(open_statuses)} reads of one client ({LIMIT}/minute)"
        " while Redis was down, 0 refused"
    )
    assert enforced_after <= LIMIT + 1, enforced_after
    drill.checked(
        f"after restart: the limit is enforced again (429 at read {enforced_after} of one"
        f" client); the cache hits again after {hit_after} reads; a cached answer moved on with"
        " the next block (never stale); 5xx in the whole drill: 0"
    )


async def until_limited(http: aiohttp.ClientSession, path: str, ip: str) -> int:
    """Reads from one address until one is refused; the number of that read."""
    deadline = time.monotonic() + 15
    for number in range(1, 10 * LIMIT):
        status, _, body = await get(http, path, ip)
        if status == 429:
            return number
        assert status == 200, body
        assert time.monotonic() < deadline
    raise AssertionError("the read limit is not enforced after Redis came back")


async def until_hit(http: aiohttp.ClientSession, path: str) -> int:
    """Reads of one path until the response cache answers it; how many reads it took."""
    deadline = time.monotonic() + 10
    reads = 0
    while time.monotonic() < deadline:
        reads += 1
        status, headers, body = await get(http, path, f"10.2.{reads // 250}.{reads % 250}")
        assert status == 200, body
        if headers.get("X-Cache") == "hit":
            return reads
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} never came from the cache after Redis came back")
