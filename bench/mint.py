"""Mint benchmark: end to end, `POST /albums/{id}/mint` → mined → finalized, through the real
API and minter processes, on anvil with automine and with 1-second blocks.

    .venv/bin/python -m bench.mint [--mints 200] [--concurrency 16] [--modes automine,1s]

Per mode: a fresh anvil, a fresh database (embedded Postgres with fsync off, or a new database
on `BENCH_DATABASE_URL`), Redis (embedded Valkey, or `BENCH_REDIS_URL`), the AlbumNFT contract,
one artist with `--mints` draft albums (inserted directly: album creation is not measured).
Then `discograph api` and `python -m minter.service` start as processes, and `--concurrency`
clients POST one mint request per album as fast as the API answers.

Latency is request → `mined`: from the moment the client sent the POST to the `created_at` of the
minter's `mint_status: mined` outbox event (its commit transaction's time; same clock, same
machine). Throughput is mints per second from the first request to the last `mined`, and to the
last `finalized`. anvil's `finalized` block trails its head by 64 blocks: with 1-second blocks
that is about a minute after the last mint; with automine no block comes by itself, so the
bench mines 64 empty blocks once every mint is mined (counted in "to finalized").
Every run is checked: as many tokens on chain as requests, one per album, owned by the artist,
nonces contiguous.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg

from bench.backfill import fresh_database, server_facts
from chain.album import call_view
from chain.rpc import RpcClient, to_int
from chain.signer import Signer
from db.catalog import NewAlbum, NewTrack, insert_album, insert_artist
from db.engine import create_pool
from discograph.deployment import deploy_and_record
from discograph.embedded import start_postgres, start_valkey
from discograph.localchain import ANVIL_DEV_KEYS, start_anvil
from discograph.processes import ChildProcess, ServiceStartError, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
JWT_SECRET = secrets.token_urlsafe(32)  # this run only
ANVIL_FINALITY_LAG = 64


@dataclass
class Run:
    mode: str
    mints: int
    requests_seconds: float
    to_mined_seconds: float
    to_finalized_seconds: float
    latencies_ms: list[float]
    errors: int
    blocks: int

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def _token(subject: str, role: str) -> str:
    import jwt

    now = int(time.time())
    claims = {"sub": subject, "role": role, "iat": now, "exp": now + 3600}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


async def _wait_http(url: str, process: ChildProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            if not process.running():
                raise ServiceStartError(f"{process.name} exited:\n{process.log_tail(40)}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise ServiceStartError(f"{process.name} not ready:\n{process.log_tail(40)}")
            await asyncio.sleep(0.1)


async def _post_all(
    base: str, token: str, albums: list[uuid.UUID], concurrency: int
) -> tuple[dict[uuid.UUID, float], int]:
    """POST a mint per album from `concurrency` clients; returns the send time per mint id."""
    sent: dict[uuid.UUID, float] = {}
    errors = 0
    queue = list(albums)
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base, connector=connector) as http:

        async def client() -> None:
            nonlocal errors
            while queue:
                album = queue.pop()
                started = time.time()
                key = {"Idempotency-Key": f"bench-{album}"}
                async with http.post(f"/albums/{album}/mint", headers=headers | key) as response:
                    body = await response.json()
                    if response.status != 202:
                        errors += 1
                        print(f"  POST failed: {response.status} {body.get('detail')}")
                        continue
                sent[uuid.UUID(body["mint_id"])] = started

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return sent, errors


async def _wait_status(
    conn: asyncpg.Connection, status: str, count: int, timeout: float, rpc: RpcClient | None = None
) -> float:
    """Wall time when `count` requests have reached `status` (or beyond); with `rpc`, empty
    blocks are mined meanwhile (automine: finality needs blocks)."""
    order = ("queued", "submitted", "mined", "confirmed", "finalized")
    reached = [s for s in order if order.index(s) >= order.index(status)]
    deadline = time.monotonic() + timeout
    mined_extra = False
    while True:
        done = await conn.fetchval(
            "SELECT count(*) FROM mint_requests WHERE status = ANY($1::text[])", reached
        )
        failed = await conn.fetchval("SELECT count(*) FROM mint_requests WHERE status = 'failed'")
        if failed:
            reason = await conn.fetchval("SELECT error FROM mint_requests WHERE status = 'failed'")
            raise SystemExit(f"{failed} mints failed, e.g.: {reason}")
        if done >= count:
            return time.time()
        if time.monotonic() > deadline:
            raise SystemExit(f"only {done}/{count} mints {status} after {timeout:.0f}s")
        if rpc is not None and not mined_extra:
            await rpc.call("anvil_mine", [hex(ANVIL_FINALITY_LAG + 1)])
            mined_extra = True
        await asyncio.sleep(0.05)


async def _check(
    conn: asyncpg.Connection, rpc: RpcClient, contract: str, artist: str, n: int
) -> None:
    rows = await conn.fetch("SELECT nonce, token_id FROM mint_requests ORDER BY nonce")
    nonces = [r["nonce"] for r in rows]
    if nonces != list(range(nonces[0], nonces[0] + n)):
        raise SystemExit("nonces of the mints are not contiguous")
    tokens = {int(r["token_id"]) for r in rows}
    if len(tokens) != n:
        raise SystemExit(f"{len(tokens)} distinct tokens for {n} mints")
    supply = await call_view(rpc, contract, "balanceOf", artist)
    if int(supply[0]) != n:
        raise SystemExit(f"the artist holds {supply[0]} tokens on chain, expected {n}")


async def run_mode(
    mode: str, args: argparse.Namespace, workdir: Path, server_dsn: str, redis_url: str
) -> Run:
    block_time = None if mode == "automine" else float(mode.rstrip("s"))
    anvil = start_anvil(workdir / mode, block_time=block_time)
    processes: list[ChildProcess] = []
    try:
        async with (
            fresh_database(server_dsn, f"mint_{mode}") as dsn,
            RpcClient(anvil.rpc_url) as rpc,
        ):
            signer = Signer(ANVIL_DEV_KEYS[0])
            artist_wallet = Signer(ANVIL_DEV_KEYS[1]).address
            chain_id = to_int(await rpc.call("eth_chainId"))
            pool = await create_pool(dsn, max_size=2)
            try:
                contract = await deploy_and_record(rpc, pool, signer, chain_id)
                async with pool.acquire() as conn:
                    artist = await insert_artist(conn, "Bench", bytes.fromhex(artist_wallet[2:]))
                    albums = []
                    for i in range(args.mints):
                        album = NewAlbum(artist, f"Album {i}", [NewTrack(1, "Track", 200)])
                        albums.append(await insert_album(conn, album))
            finally:
                await pool.close()
            port = free_port()
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("BENCH_")},
                "DATABASE_URL": dsn,
                "REDIS_URL": redis_url,
                "RPC_URL": anvil.rpc_url,
                "CHAIN_ID": str(chain_id),
                "ALBUM_CONTRACT": contract,
                "JWT_SECRET": JWT_SECRET,
                "RATE_LIMIT_WRITES": "off",
                "RATE_LIMIT_READS": "off",
                "MINTER_PRIVATE_KEY": ANVIL_DEV_KEYS[0],
                "CONFIRMATIONS": "1",
                "POLL_INTERVAL": "0.2",
                "HTTP_PORT": str(port),
                "METRICS_PORT": "0",
                "LOG_LEVEL": "WARNING",
                "PYTHONPATH": str(REPO_ROOT),
            }
            api = ChildProcess(
                "api",
                [sys.executable, "-m", "discograph.cli", "--env-file", "/dev/null", "api"],
                log_path=workdir / mode / "api.log",
                env=env,
                cwd=REPO_ROOT,
            )
            processes.append(api)
            minter = ChildProcess(
                "minter",
                [sys.executable, "-m", "minter.service"],
                log_path=workdir / mode / "minter.log",
                env=env,
                cwd=REPO_ROOT,
            )
            processes.append(minter)
            base = f"http://127.0.0.1:{port}"
            await _wait_http(base + "/health/live", api)
            first_block = to_int(await rpc.call("eth_blockNumber"))
            start = time.time()
            sent, errors = await _post_all(
                base, _token(str(artist), "artist"), albums, args.concurrency
            )
            requests_done = time.time()
            conn = await asyncpg.connect(dsn)
            try:
                last_mined = await _wait_status(conn, "mined", len(sent), args.timeout)
                automine = rpc if block_time is None else None
                last_final = await _wait_status(
                    conn, "finalized", len(sent), args.timeout + 90, automine
                )
                mined_at = dict(
                    await conn.fetch(
                        "SELECT (payload->>'mint_id')::uuid, min(created_at) FROM outbox"
                        " WHERE kind = 'mint_status' AND payload->>'status' = 'mined'"
                        " GROUP BY 1"
                    )
                )
                await _check(conn, rpc, contract, artist_wallet, len(sent))
            finally:
                await conn.close()
            last_block = to_int(await rpc.call("eth_blockNumber"))
            latencies = [
                (mined_at[mint].timestamp() - started) * 1000
                for mint, started in sent.items()
                if mint in mined_at
            ]
            return Run(
                mode=mode,
                mints=len(sent),
                requests_seconds=requests_done - start,
                to_mined_seconds=last_mined - start,
                to_finalized_seconds=last_final - start,
                latencies_ms=latencies,
                errors=errors,
                blocks=last_block - first_block,
            )
    finally:
        for process in processes:
            process.stop()
        anvil.stop()


def report(runs: list[Run], facts: str, args: argparse.Namespace) -> None:
    print(f"\npostgres: {facts}")
    print(
        f"load: {args.mints} mint requests per mode, {args.concurrency} concurrent clients;"
        " one API process (uvicorn, 1 worker), one minter process; 2-core machine, all local"
    )
    print(
        f"\n{'mode':<10}{'mints':>7}{'POST/s':>9}{'mined/s':>9}{'final/s':>9}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'blocks':>8}{'errors':>8}"
    )
    for r in runs:
        print(
            f"{r.mode:<10}{r.mints:>7}{r.mints / r.requests_seconds:>9.1f}"
            f"{r.mints / r.to_mined_seconds:>9.1f}{r.mints / r.to_finalized_seconds:>9.1f}"
            f"{r.percentile(0.5):>9.0f}{r.percentile(0.99):>9.0f}"
            f"{max(r.latencies_ms, default=0):>9.0f}{r.blocks:>8}{r.errors:>8}"
        )
    print(
        "\nlatency = POST sent → the minter's `mined` commit; mined/s and final/s count from the"
        f" first POST to the last mined / finalized (anvil finalizes {ANVIL_FINALITY_LAG} blocks"
        " below its head)"
    )
    for r in runs:
        mean = statistics.fmean(r.latencies_ms) if r.latencies_ms else 0.0
        print(f"  {r.mode}: mean request→mined {mean:.0f} ms over {len(r.latencies_ms)} mints")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.mint", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--mints", type=int, default=200, help="mint requests per mode (200)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument(
        "--modes", default="automine,1s", help="comma list: automine and/or Ns block times"
    )
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per phase (180)")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for mode in modes:
        if mode != "automine" and not (mode.endswith("s") and mode[:-1].replace(".", "").isdigit()):
            parser.error(f"unknown mode {mode!r}: automine or e.g. 1s")
    if args.mints < 1 or args.concurrency < 1:
        parser.error("--mints and --concurrency must be positive")
    workdir = Path(tempfile.mkdtemp(prefix="discograph-bench-mint-"))
    with contextlib.ExitStack() as stack:
        server_dsn = os.environ.get("BENCH_DATABASE_URL")
        if not server_dsn:
            postgres = start_postgres(workdir / "postgres", durable=False)
            stack.callback(postgres.stop)
            server_dsn = postgres.dsn("postgres")
        redis_url = os.environ.get("BENCH_REDIS_URL")
        if not redis_url:
            valkey = start_valkey(workdir / "valkey")
            stack.callback(valkey.stop)
            redis_url = valkey.url()
        runs = []
        for mode in modes:
            print(f"mode {mode}: {args.mints} mints …", flush=True)
            runs.append(asyncio.run(run_mode(mode, args, workdir, server_dsn, redis_url)))
        report(runs, asyncio.run(server_facts(server_dsn)), args)
    return 1 if any(r.errors for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
