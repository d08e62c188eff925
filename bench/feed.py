"""Websocket feed benchmark: commit-to-client latency and delivery with many clients, against a
bare Litestar fan-out route (the ceiling), same run.

    .venv/bin/python -m bench.feed [--clients 1000] [--seconds 30] [--per-block 100]
                                   [--workers 1,2] [--no-ceiling]

Stack (all on this machine): an embedded Postgres (fsync off) and Valkey, an automining anvil,
`discograph index` following a BenchTransfers contract (newHeads over websockets), and the
server under test as its own process: `discograph api` (one process, then `--workers 2`), and
`uvicorn bench.feed_ceiling:app_factory` for the ceiling. Once a second the bench sends one
`emitBlock` transaction of `--per-block` Transfers (one block each).

Clients: `--clients` websocket connections in this process (uvloop), unfiltered, anonymous.
Each frame's receive time is recorded with the first and last cursor it carries. Commit times
come from a separate thread that LISTENs to `discograph_outbox` (Postgres delivers it at
commit; its payload names the batch's last seq): latency of a message = its frame's receive
time − the commit time of its batch. Every client must get every seq committed after it went
live, once, in order: the run fails loudly otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import os
import random
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import uvloop
import websockets
from websockets.asyncio.client import ClientConnection, connect

from chain.abi import deploy_data, encode_call, load_artifact
from chain.rpc import RpcClient
from chain.signer import Signer
from chain.transact import send_transaction
from db.engine import ensure_database, migrate, with_database
from db.locks import OUTBOX_CHANNEL
from discograph.embedded import start_postgres, start_valkey
from discograph.localchain import ANVIL_DEV_KEYS, start_anvil
from discograph.processes import ChildProcess, free_port

BIN = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parents[1]
SEED = 20261204


@dataclass
class Commits:
    """Commit times by batch, from the NOTIFY thread: (last seq, count, time)."""

    lasts: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, last: int, at: float) -> None:
        with self.lock:
            self.lasts.append(last)
            self.times.append(at)

    def time_of(self, seq: int) -> float | None:
        """The commit time of the batch holding `seq` (the first batch whose last ≥ seq)."""
        index = bisect.bisect_left(self.lasts, seq)
        return self.times[index] if index < len(self.times) else None


def listen_commits(dsn: str, commits: Commits, stop: threading.Event) -> threading.Thread:
    def run() -> None:
        async def main() -> None:
            conn = await asyncpg.connect(dsn)

            def on_notify(*args: object) -> None:
                at = time.time()
                last = int(str(args[3]).rsplit(":", 1)[1])
                commits.add(last, at)

            await conn.add_listener(OUTBOX_CHANNEL, on_notify)
            await asyncio.to_thread(stop.wait)
            await conn.close()

        asyncio.run(main())

    thread = threading.Thread(target=run, name="commits", daemon=True)
    thread.start()
    return thread


@dataclass
class Client:
    connection: ClientConnection
    start: int | None = None  # the cursor of `live`
    frames: list[tuple[float, int, int, int]] = field(default_factory=list)  # at, first, last, n
    closed: str | None = None

    async def read(self) -> None:
        try:
            async for frame in self.connection:
                at = time.time()
                text = str(frame)
                if self.start is None:
                    self.start = int(text.split('"cursor":"', 1)[1].split('"', 1)[0])
                    continue
                first = int(text.split('"cursor":"', 1)[1].split('"', 1)[0])
                last = int(text.rsplit('"cursor":"', 1)[1].split('"', 1)[0])
                if '"heartbeat"' in text:
                    continue
                self.frames.append((at, first, last, text.count("\n") + 1))
        except websockets.ConnectionClosed as exc:
            self.closed = f"{exc.rcvd.code if exc.rcvd else 'no close frame'}"


@dataclass
class Result:
    name: str
    clients: int
    p50: float
    p99: float
    worst: float
    messages: int
    rate: float
    problems: list[str]
    rss_mib: float


async def emit_blocks(
    rpc: RpcClient, signer: Signer, contract: str, per_block: int, stop: float
) -> int:
    """One emitBlock transaction a second until `stop`; returns the blocks sent."""
    rng = random.Random(SEED)
    function = load_artifact("BenchTransfers").function("emitBlock")
    holders = [f"0x{rng.getrandbits(160):040x}" for _ in range(64)]
    blocks = 0
    next_at = time.monotonic()
    while time.monotonic() < stop:
        data = encode_call(function, [rng.choice(holders) for _ in range(per_block)], [], [])
        await send_transaction(rpc, signer, to=contract, data=data)
        blocks += 1
        next_at += 1.0
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return blocks


def rss_of(pid: int) -> float:
    """Peak RSS (VmHWM) of a process and its children, MiB."""
    total = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            children = (task / "children").read_text().split()
            pids += [int(c) for c in children]
    for each in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total / 1024


def percentile(pairs: list[tuple[float, int]], q: float) -> float:
    """Weighted percentile of (value, weight) pairs."""
    pairs.sort()
    total = sum(w for _, w in pairs)
    target = q * total
    running = 0
    for value, weight in pairs:
        running += weight
        if running >= target:
            return value
    return pairs[-1][0]


@contextlib.contextmanager
def server(
    name: str, argv: list[str], env: dict[str, str], folder: Path, url: str
) -> Iterator[ChildProcess]:
    process = ChildProcess(name, argv, log_path=folder / f"{name}.log", env=env, cwd=folder)

    def up() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - loopback only
                return True
        except OSError as exc:
            return "HTTP Error" in str(exc)  # any HTTP answer means it is serving

    try:
        process.wait_until(up, 60, f"{name} answering")
        yield process
    finally:
        process.stop()


async def measure(
    name: str,
    ws_url: str,
    pid: int,
    clients_count: int,
    seconds: float,
    per_block: int,
    rpc: RpcClient,
    signer: Signer,
    contract: str,
    dsn: str,
    commits: Commits,
) -> Result:
    clients: list[Client] = []
    readers = []
    for _ in range(clients_count):
        connection = await connect(ws_url, max_size=None, open_timeout=30, ping_interval=None)
        client = Client(connection)
        clients.append(client)
        readers.append(asyncio.create_task(client.read()))
    deadline = time.monotonic() + 30
    while any(c.start is None for c in clients):
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: clients did not go live")
        await asyncio.sleep(0.05)
    what = f"emitting {per_block} transfers/s for {seconds:g} s"
    print(f"  {name}: {clients_count} clients live; {what}", flush=True)
    began = time.monotonic()
    await emit_blocks(rpc, signer, contract, per_block, began + seconds)
    # Let the last block through the indexer and out to every client.
    conn = await asyncpg.connect(dsn)
    try:
        await asyncio.sleep(2.0)
        final = int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM outbox"))
    finally:
        await conn.close()
    drain_deadline = time.monotonic() + 30
    while any(
        (c.frames[-1][2] if c.frames else c.start or 0) < final for c in clients if c.closed is None
    ):
        if time.monotonic() > drain_deadline:
            break
        await asyncio.sleep(0.1)
    elapsed = time.monotonic() - began
    rss = rss_of(pid)
    for client in clients:
        await client.connection.close()
    await asyncio.gather(*readers, return_exceptions=True)

    problems: list[str] = []
    pairs: list[tuple[float, int]] = []
    received = 0
    for index, client in enumerate(clients):
        expected = (client.start or 0) + 1
        for at, first, last, count in client.frames:
            if first != expected or last - first + 1 != count:
                problems.append(
                    f"client {index}: frame {first}..{last} ({count}) after {expected - 1}"
                )
                break
            expected = last + 1
            seq = first
            while seq <= last:
                committed = commits.time_of(seq)
                batch_end = (
                    commits.lasts[bisect.bisect_left(commits.lasts, seq)] if committed else last
                )
                upto = min(last, batch_end)
                if committed is not None:
                    pairs.append((at - committed, upto - seq + 1))
                seq = upto + 1
            received += count
        if expected - 1 < final:
            problems.append(
                f"client {index}: stopped at {expected - 1} of {final} ({client.closed})"
            )
    p50 = percentile(pairs, 0.50) if pairs else float("nan")
    p99 = percentile(pairs, 0.99) if pairs else float("nan")
    worst = max(v for v, _ in pairs) if pairs else float("nan")
    return Result(name, clients_count, p50, p99, worst, received, received / elapsed, problems, rss)


async def deploy_bench(rpc: RpcClient, signer: Signer) -> str:
    receipt = await send_transaction(
        rpc, signer, to=None, data=deploy_data(load_artifact("BenchTransfers"))
    )
    return str(receipt["contractAddress"])


async def run(args: argparse.Namespace) -> list[Result]:
    folder = Path(tempfile.mkdtemp(prefix="discograph-bench-feed-"))
    postgres = start_postgres(folder / "pg", durable=False)
    valkey = start_valkey(folder / "valkey")
    anvil = start_anvil(folder, extra_args=("--gas-limit", "100000000"))
    results: list[Result] = []
    stop = threading.Event()
    try:
        dsn = with_database(postgres.dsn("postgres"), "feed")
        await ensure_database(dsn)
        await migrate(dsn)
        signer = Signer(ANVIL_DEV_KEYS[0])
        async with RpcClient(anvil.rpc_url) as rpc:
            contract = await deploy_bench(rpc, signer)
            commits = Commits()
            listen_commits(dsn, commits, stop)
            base_env = dict(os.environ)
            base_env.update(
                DATABASE_URL=dsn,
                REDIS_URL=valkey.url(),
                RPC_URL=anvil.rpc_url,
                RPC_WS_URL=anvil.rpc_url.replace("http://", "ws://", 1),
                EXTRA_CONTRACTS=contract,
                CONFIRMATIONS="0",
                POLL_INTERVAL="0.05",
                METRICS_PORT="0",
                LOG_LEVEL="WARNING",
                RATE_LIMIT_READS="off",
                RATE_LIMIT_WRITES="off",
                WS_MAX_PER_IP="100000",
                WS_QUEUE_SIZE="1000000",
                WS_IDLE_TIMEOUT="86400",
            )
            indexer = ChildProcess(
                "indexer",
                [str(BIN / "discograph"), "index"],
                log_path=folder / "indexer.log",
                env=base_env,
                cwd=folder,
            )
            try:
                # Warm up: a first block so the feed has started (the outbox is not empty).
                await send_transaction(
                    rpc,
                    signer,
                    to=contract,
                    data=encode_call(
                        load_artifact("BenchTransfers").function("emitBlock"),
                        [signer.address],
                        [],
                        [],
                    ),
                )
                await asyncio.sleep(2)
                for workers in args.workers:
                    port = free_port()
                    env = dict(base_env, HTTP_PORT=str(port))
                    argv = [str(BIN / "discograph"), "api", "--workers", str(workers)]
                    url = f"http://127.0.0.1:{port}"
                    with server(f"api-w{workers}", argv, env, folder, url + "/health/live") as api:
                        results.append(
                            await measure(
                                f"discograph, {workers} worker{'s' if workers > 1 else ''}",
                                f"ws://127.0.0.1:{port}/ws/events",
                                api.pid,
                                args.clients,
                                args.seconds,
                                args.per_block,
                                rpc,
                                signer,
                                contract,
                                dsn,
                                commits,
                            )
                        )
                    if workers == args.workers[0] and not args.no_ceiling:
                        port = free_port()
                        env = dict(base_env, FEED_CEILING_DSN=dsn)
                        argv = [
                            sys.executable,
                            "-m",
                            "uvicorn",
                            "bench.feed_ceiling:app_factory",
                            "--factory",
                            "--host",
                            "127.0.0.1",
                            "--port",
                            str(port),
                            "--log-level",
                            "warning",
                            "--loop",
                            "uvloop",
                        ]
                        env["PYTHONPATH"] = str(REPO_ROOT)
                        with server(
                            "ceiling", argv, env, folder, f"http://127.0.0.1:{port}/"
                        ) as ceiling:
                            results.append(
                                await measure(
                                    "ceiling (bare Litestar fan-out)",
                                    f"ws://127.0.0.1:{port}/ws/events",
                                    ceiling.pid,
                                    args.clients,
                                    args.seconds,
                                    args.per_block,
                                    rpc,
                                    signer,
                                    contract,
                                    dsn,
                                    commits,
                                )
                            )
            finally:
                indexer.stop()
    finally:
        stop.set()
        anvil.stop()
        valkey.stop()
        postgres.stop()
    return results


def report(results: list[Result], args: argparse.Namespace) -> None:
    print()
    load = f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}"
    print(
        f"feed: {args.clients} clients, {args.per_block} transfers/block, 1 block/s,"
        f" {args.seconds:g} s each; {load}"
    )
    head = f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'msgs/s':>10} {'RSS MiB':>8}"
    print(f"{'server':<34} {head}  delivery")
    for r in results:
        ok = "all delivered" if not r.problems else f"{len(r.problems)} problems"
        figures = f"{r.p50 * 1000:>8.1f} {r.p99 * 1000:>8.1f} {r.worst * 1000:>8.1f}"
        print(f"{r.name:<34} {figures} {r.rate:>10,.0f} {r.rss_mib:>8.0f}  {ok}")
    ceiling = next((r for r in results if r.name.startswith("ceiling")), None)
    if ceiling is not None:
        for r in results:
            if r is not ceiling:
                print(f"p99 ratio {r.name} / ceiling: {r.p99 / ceiling.p99:.2f} (target ≤ 1.5)")
    for r in results:
        for problem in r.problems[:5]:
            print(f"  {r.name}: {problem}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--per-block", type=int, default=100)
    parser.add_argument("--workers", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2])
    parser.add_argument("--no-ceiling", action="store_true")
    args = parser.parse_args()
    results = uvloop.run(run(args))
    report(results, args)
    if any(r.problems for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
