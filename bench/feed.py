"""Websocket feed benchmark: commit-to-client latency and delivery with many clients, against a
bare Litestar fan-out route (the ceiling), same run.

    .venv/bin/python -m bench.feed [--clients 1000] [--seconds 30] [--per-block 100]
                                   [--workers 1,2] [--no-ceiling] [--compression deflate|none]
                                   [--details]

Stack (all on this machine): an embedded Postgres (fsync off) and Valkey, an automining anvil,
`discograph index` following a BenchTransfers contract (CONFIRMATIONS=0, newHeads over
websockets), and the server under test as its own process: `discograph api` (one process, then
`--workers 2`), and `uvicorn bench.feed_ceiling:app_factory` for the ceiling. Once a second the
bench sends one `emitBlock` transaction of `--per-block` Transfers (70 % mints, 30 % moves, from
a seeded generator), which anvil mines as one block.

Each phase: connect `--clients` websocket clients (in this process, one uvloop event loop;
unfiltered, anonymous, with permessage-deflate like a browser unless `--compression none`),
wait for every `live`, send one warm-up block and let it reach everyone (its latency is printed
apart, not in the figures), then one block a second for `--seconds`, then wait until every
client has the last seq.

Latency: a separate process LISTENs to `discograph_outbox` (Postgres delivers it at commit; its
payload names the batch's last seq) and writes each arrival time to a file, so the clients'
work cannot delay the timestamps; it also subscribes to discograph's Redis feed channel, which
splits the latency into commit → published on Redis and the rest. The latency of a message is
the receive time of its frame minus the arrival of the first NOTIFY whose last seq covers it.

Delivery: each client's cursors, in order, must equal the outbox seqs after its `live` cursor
up to the last one of the phase; missing, duplicate, unexpected or reordered messages and any
client the server closed are reported, and the run exits 1.

Also per phase: CPU of the server process(es), the indexer, this client process and the whole
machine; the clients' event-loop lag (how late a 5 ms timer fires: small next to the latencies
means one client process reads fast enough); peak RSS (VmHWM) of the server's process tree;
and how the kernel spread the connections over the workers. `--details` prints each block.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gc
import os
import random
import re
import resource
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import asyncpg
import uvloop
import websockets
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect

from api.feed.messages import decode_items
from api.feed.service import feed_channel
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
CURSOR = re.compile(rb'"cursor":"(\d+)"')
TICK = os.sysconf("SC_CLK_TCK")
HOLDERS = [f"0x{random.Random(SEED + i).getrandbits(160):040x}" for i in range(64)]


# --- Commit times: a listener process --------------------------------------------------------


async def listen_commits(dsn: str, redis_url: str, out: TextIO) -> None:
    """The `--listen-commits` mode, until killed: a line "C <unix time> <payload>" per NOTIFY,
    and "P <unix time> <after> <last seq>" per batch discograph's publisher puts on Redis."""
    conn = await asyncpg.connect(dsn)

    def on_notify(*args: object) -> None:
        out.write(f"C {time.time():.6f} {args[3]}\n")

    await conn.add_listener(OUTBOX_CHANNEL, on_notify)
    redis = Redis.from_url(redis_url)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(feed_channel(dsn))
    out.write("ready\n")
    async for message in pubsub.listen():
        at = time.time()
        if message["type"] == "message":
            after, items = decode_items(message["data"])
            out.write(f"P {at:.6f} {after} {items[-1].seq if items else after}\n")


@dataclass
class Commits:
    """NOTIFY arrivals in order (running max of the last seq, arrival time), and the times
    discograph's publisher put each seq on Redis."""

    lasts: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    published_afters: list[int] = field(default_factory=list)
    published_lasts: list[int] = field(default_factory=list)
    published_times: list[float] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Commits:
        commits = cls()
        for line in path.read_text().splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "C":
                at, payload = rest.split(" ", 1)
                last = int(payload.rsplit(":", 1)[1])
                if commits.lasts and last <= commits.lasts[-1]:
                    continue  # covered by an earlier notification
                commits.lasts.append(last)
                commits.times.append(float(at))
            elif kind == "P":
                at, after, last_text = rest.split(" ")
                if commits.published_lasts and int(last_text) <= commits.published_lasts[-1]:
                    continue  # a second API process's publisher (never two at once)
                commits.published_afters.append(int(after))
                commits.published_lasts.append(int(last_text))
                commits.published_times.append(float(at))
        return commits

    def time_of(self, seq: int) -> float | None:
        """Arrival of the first notification whose last seq ≥ `seq`."""
        index = bisect.bisect_left(self.lasts, seq)
        return self.times[index] if index < len(self.times) else None

    def published(self, seq: int) -> float | None:
        """When discograph's publisher put `seq` on Redis (None for the ceiling's phase)."""
        index = bisect.bisect_left(self.published_lasts, seq)
        if index < len(self.published_times) and self.published_afters[index] < seq:
            return self.published_times[index]
        return None


# --- Clients ---------------------------------------------------------------------------------


class Frames:
    """Every distinct frame once: the clients of a batch mostly get the very same bytes."""

    def __init__(self) -> None:
        self.by_head: dict[tuple[int, bytes], list[bytes]] = {}

    def intern(self, data: bytes) -> bytes:
        key = (len(data), data[:64])
        same = self.by_head.get(key)
        if same is None:
            self.by_head[key] = [data]
            return data
        for frame in same:
            if frame == data:  # a memcmp: cheap next to the read itself
                return frame
        same.append(data)
        return data


@dataclass
class Client:
    connection: ClientConnection
    start: int | None = None  # the cursor of `live`
    frames: list[tuple[float, bytes]] = field(default_factory=list)
    closed: str | None = None  # how the server ended it, if it did

    async def read(self, store: Frames) -> None:
        connection = self.connection
        try:
            first = await connection.recv(decode=False)
            assert isinstance(first, bytes)
            found = CURSOR.search(first)
            if b'"type":"live"' not in first or found is None:
                self.closed = f"first frame is not live: {first[:80]!r}"
                return
            self.start = int(found.group(1))
            while True:
                data = await connection.recv(decode=False)
                at = time.time()
                assert isinstance(data, bytes)
                self.frames.append((at, store.intern(data)))
        except websockets.ConnectionClosed as exc:
            self.closed = f"closed {exc.rcvd.code if exc.rcvd else 'without a close frame'}"


async def loop_lag(lags: list[float], stop: asyncio.Event, every: float = 0.005) -> None:
    """How late a short timer fires on the clients' event loop."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        began = loop.time()
        await asyncio.sleep(every)
        lags.append(loop.time() - began - every)


# --- Processes: tree, CPU, memory, connections -------------------------------------------------


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    for each in pids:  # grows while iterating: breadth-first
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{each}/task").iterdir():
                pids += [int(c) for c in (task / "children").read_text().split()]
    return pids


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / TICK, sum(values) / TICK


def peak_rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total / 1024


def connections_per_process(pids: list[int], port: int) -> dict[int, int]:
    """Established TCP connections on the server's `port`, by the pid that holds them."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if int(parts[1].rsplit(":", 1)[1], 16) == port and parts[3] == "01":
                    inodes.add(parts[9])
    counts: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            n = 0
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        n += 1
            if n:
                counts[pid] = n
    return counts


@dataclass
class Usage:
    """CPU seconds at the start of a measurement window."""

    server: float
    indexer: float
    bench: float
    busy: float
    total: float
    wall: float

    @classmethod
    def now(cls, server: list[int], indexer: int) -> Usage:
        self_usage = resource.getrusage(resource.RUSAGE_SELF)
        busy, total = machine_busy()
        return cls(
            cpu_seconds(server),
            cpu_seconds([indexer]),
            self_usage.ru_utime + self_usage.ru_stime,
            busy,
            total,
            time.monotonic(),
        )


# --- The chain ---------------------------------------------------------------------------------


@dataclass
class Chain:
    rpc: RpcClient
    signer: Signer
    contract: str
    rng: random.Random = field(default_factory=lambda: random.Random(SEED))
    minted: int = 0

    async def block(self, transfers: int) -> None:
        """One emitBlock transaction: 70 % mints to 64 holders, 30 % moves of minted tokens."""
        holders = HOLDERS
        mints = transfers - (transfers * 3 // 10 if self.minted else 0)
        moves = transfers - mints
        mint_to = [self.rng.choice(holders) for _ in range(mints)]
        move_ids = [self.rng.randint(1, self.minted + mints) for _ in range(moves)]
        move_to = [self.rng.choice(holders) for _ in range(moves)]
        function = load_artifact("BenchTransfers").function("emitBlock")
        data = encode_call(function, mint_to, move_ids, move_to)
        await send_transaction(self.rpc, self.signer, to=self.contract, data=data)
        self.minted += mints

    async def blocks(self, transfers: int, seconds: float) -> int:
        """One block a second for `seconds`; returns how many."""
        stop = time.monotonic() + seconds
        next_at = time.monotonic()
        sent = 0
        while next_at < stop:
            await self.block(transfers)
            sent += 1
            next_at += 1.0
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        return sent


async def deploy_bench(rpc: RpcClient, signer: Signer) -> str:
    receipt = await send_transaction(
        rpc, signer, to=None, data=deploy_data(load_artifact("BenchTransfers"))
    )
    return str(receipt["contractAddress"])


# --- One measurement ---------------------------------------------------------------------------


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
    cpu: dict[str, float]  # % of one core over the window
    lag_p99: float
    lag_max: float
    spread: list[int]  # connections per server process
    batches: dict[float, list[tuple[float, int]]]  # commit time: (latency, messages) pairs
    publish: dict[float, float]  # commit time: commit → discograph's Redis publish, s
    warmup: tuple[float, float, float]  # the warm-up block: first, p50, last client, s
    frame_bytes: float  # mean size of a distinct frame, uncompressed


def percentile(pairs: list[tuple[float, int]], q: float) -> float:
    """Percentile of (value, weight) pairs, sorted by value."""
    target = q * sum(w for _, w in pairs)
    running = 0
    for value, weight in pairs:
        running += weight
        if running >= target:
            return value
    return pairs[-1][0]


@dataclass
class Stack:
    dsn: str
    chain: Chain
    indexer_pid: int
    commits_path: Path
    clients: int
    seconds: float
    per_block: int
    compression: str | None


async def measure(stack: Stack, name: str, port: int, pid: int) -> Result:
    url = f"ws://127.0.0.1:{port}/ws/events"
    # No garbage collection in the clients' process during a phase: a full collection over
    # 1,000 connections' objects stops every client for ~100 ms, which is not the server's.
    gc.collect()
    gc.disable()
    try:
        return await measure_phase(stack, name, port, pid, url)
    finally:
        gc.enable()
        gc.collect()


async def measure_phase(stack: Stack, name: str, port: int, pid: int, url: str) -> Result:
    store = Frames()
    clients: list[Client] = []
    readers = []
    for _ in range(stack.clients):
        connection = await connect(
            url,
            max_size=None,
            open_timeout=30,
            ping_interval=None,
            proxy=None,
            compression=stack.compression,
        )
        client = Client(connection)
        clients.append(client)
        readers.append(asyncio.create_task(client.read(store)))
    deadline = time.monotonic() + 30
    while any(c.start is None and c.closed is None for c in clients):
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: clients did not go live")
        await asyncio.sleep(0.05)
    if any(c.closed for c in clients):
        raise SystemExit(f"{name}: {next(c.closed for c in clients if c.closed)}")
    tree = process_tree(pid)
    spread = sorted(connections_per_process(tree, port).values(), reverse=True)
    what = f"{stack.per_block} transfers/s for {stack.seconds:g} s"
    print(f"  {name}: {stack.clients} clients live {spread}; emitting {what}", flush=True)

    conn = await asyncpg.connect(stack.dsn)
    try:
        # A warm-up block, out of the figures: the first batch after many connections opened
        # pays one-off costs (in discograph, a full garbage collection); reported apart.
        await stack.chain.block(stack.per_block)
        warm = await settle(conn, clients)
        lags: list[float] = []
        stop_lag = asyncio.Event()
        lag_task = asyncio.create_task(loop_lag(lags, stop_lag))
        before = Usage.now(tree, stack.indexer_pid)
        blocks = await stack.chain.blocks(stack.per_block, stack.seconds)
        final = await settle(conn, clients)  # the last block through the indexer, to everyone
        after = Usage.now(tree, stack.indexer_pid)
        stop_lag.set()
        await lag_task
        low = min(c.start or 0 for c in clients)
        outbox = [
            int(r[0])
            for r in await conn.fetch(
                "SELECT seq FROM outbox WHERE seq > $1 AND seq <= $2 ORDER BY seq", low, final
            )
        ]
    finally:
        await conn.close()
    rss = peak_rss_mib(tree)
    dropped = [(i, c.closed) for i, c in enumerate(clients) if c.closed is not None]
    for client in clients:
        await client.connection.close()
    await asyncio.gather(*readers, return_exceptions=True)

    window = after.wall - before.wall
    cpu = {
        "server": 100 * (after.server - before.server) / window,
        "indexer": 100 * (after.indexer - before.indexer) / window,
        "bench": 100 * (after.bench - before.bench) / window,
        "machine": 100
        * (os.cpu_count() or 1)
        * (after.busy - before.busy)
        / (after.total - before.total),
    }
    commits = Commits.load(stack.commits_path)
    return analyse(
        name, clients, outbox, final, warm, commits, blocks, rss, cpu, lags, spread, dropped
    )


async def settle(conn: asyncpg.Connection, clients: list[Client], timeout: float = 30) -> int:
    """Wait until the outbox stopped growing (0.5 s) and every client has its last seq."""
    deadline = time.monotonic() + timeout
    final, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        last = int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM outbox"))
        if last != final:
            final, since = last, time.monotonic()
        behind = any(
            c.closed is None and (c.start or 0) < final and last_cursor_of(c) < final
            for c in clients
        )
        if not behind and time.monotonic() - since >= 0.5:
            break
        await asyncio.sleep(0.05)
    return final


def last_cursor_of(client: Client) -> int:
    return last_cursor(client.frames[-1][1]) if client.frames else (client.start or 0)


def last_cursor(frame: bytes) -> int:
    found = CURSOR.search(frame, frame.rfind(b"\n") + 1)
    return int(found.group(1)) if found else 0


def analyse(
    name: str,
    clients: list[Client],
    outbox: list[int],
    final: int,
    warm: int,
    commits: Commits,
    blocks: int,
    rss: float,
    cpu: dict[str, float],
    lags: list[float],
    spread: list[int],
    dropped: list[tuple[int, str | None]],
) -> Result:
    # Per distinct frame: its cursors, and its messages grouped by commit time.
    parsed: dict[int, tuple[list[int], list[tuple[float | None, int]]]] = {}
    sizes: list[int] = []  # of the distinct frames that carry messages

    def parse(frame: bytes) -> tuple[list[int], list[tuple[float | None, int]]]:
        known = parsed.get(id(frame))
        if known is not None:
            return known
        if frame.startswith(b'{"type":"heartbeat"'):
            known = ([], [])
        else:
            cursors = [int(c) for c in CURSOR.findall(frame)]
            if len(cursors) != frame.count(b"\n") + 1:
                cursors.append(-1)  # a line without a cursor: reported as unexpected
            groups: list[tuple[float | None, int]] = []
            for seq in cursors:
                committed = commits.time_of(seq)
                published = commits.published(seq)
                if committed is not None and published is not None:
                    publish.setdefault(committed, published - committed)
                if groups and groups[-1][0] == committed:
                    groups[-1] = (committed, groups[-1][1] + 1)
                else:
                    groups.append((committed, 1))
            known = (cursors, groups)
            sizes.append(len(frame))
        parsed[id(frame)] = known  # the frame outlives this: its id stays unique
        return known

    problems: list[str] = [f"client {i}: {why}" for i, why in dropped]
    pairs: list[tuple[float, int]] = []
    batches: dict[float, list[tuple[float, int]]] = {}
    publish: dict[float, float] = {}
    warm_pairs: list[tuple[float, int]] = []
    warm_time = commits.time_of(warm) or 0.0
    received = 0
    measured = 0
    no_commit = 0
    for index, client in enumerate(clients):
        got: list[int] = []
        for at, frame in client.frames:
            cursors, groups = parse(frame)
            got += cursors
            for committed, count in groups:
                if committed is None:
                    no_commit += count
                else:
                    batches.setdefault(committed, []).append((at - committed, count))
                    if committed <= warm_time:
                        warm_pairs.append((at - committed, count))
                    else:
                        pairs.append((at - committed, count))
                        measured += count
        received += len(got)
        expected = outbox[bisect.bisect_right(outbox, client.start or 0) :]
        if got != expected:
            seen = set(got)
            missing = len(set(expected) - seen)
            duplicates = len(got) - len(seen)
            unexpected = len(seen - set(expected))
            ordered = got == sorted(got)
            problems.append(
                f"client {index}: {len(got)} messages for {len(expected)} seqs after"
                f" {client.start}..{final}: {missing} missing, {duplicates} duplicates,"
                f" {unexpected} unexpected{'' if ordered else ', out of order'}"
            )
    if no_commit:
        problems.append(f"{no_commit} messages without a NOTIFY covering them")
    pairs.sort()
    warm_pairs.sort()
    lags.sort()
    nan = float("nan")
    return Result(
        name=name,
        clients=len(clients),
        p50=percentile(pairs, 0.50) if pairs else nan,
        p99=percentile(pairs, 0.99) if pairs else nan,
        worst=pairs[-1][0] if pairs else nan,
        messages=received,
        rate=measured / blocks,  # a block a second
        frame_bytes=sum(sizes) / len(sizes) if sizes else nan,
        warmup=(
            (warm_pairs[0][0], percentile(warm_pairs, 0.5), warm_pairs[-1][0])
            if warm_pairs
            else (nan, nan, nan)
        ),
        problems=problems,
        rss_mib=rss,
        cpu=cpu,
        lag_p99=lags[int(0.99 * (len(lags) - 1))] if lags else nan,
        lag_max=lags[-1] if lags else nan,
        spread=spread,
        batches=batches,
        publish=publish,
    )


# --- The run -----------------------------------------------------------------------------------


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


def wait_for_line(path: Path, line: str, process: ChildProcess, timeout: float) -> None:
    def there() -> bool:
        with contextlib.suppress(OSError):
            return line in path.read_text().splitlines()
        return False

    process.wait_until(there, timeout, f"writing {line!r} to {path}")


async def run(args: argparse.Namespace) -> list[Result]:
    folder = Path(tempfile.mkdtemp(prefix="discograph-bench-feed-"))
    postgres = start_postgres(folder / "pg", durable=False)
    valkey = start_valkey(folder / "valkey")
    anvil = start_anvil(folder, extra_args=("--gas-limit", "100000000"))
    processes: list[ChildProcess] = []
    results: list[Result] = []
    try:
        dsn = with_database(postgres.dsn("postgres"), "feed")
        await ensure_database(dsn)
        await migrate(dsn)
        commits_path = folder / "commits.txt"
        listener = ChildProcess(
            "commits",
            [
                sys.executable,
                "-m",
                "bench.feed",
                "--listen-commits",
                dsn,
                valkey.url(),
                str(commits_path),
            ],
            log_path=folder / "commits.log",
            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
            cwd=REPO_ROOT,
        )
        processes.append(listener)
        wait_for_line(commits_path, "ready", listener, 30)
        signer = Signer(ANVIL_DEV_KEYS[0])
        async with RpcClient(anvil.rpc_url) as rpc:
            chain = Chain(rpc, signer, await deploy_bench(rpc, signer))
            base_env = dict(os.environ)
            base_env.update(
                DATABASE_URL=dsn,
                REDIS_URL=valkey.url(),
                RPC_URL=anvil.rpc_url,
                RPC_WS_URL=anvil.rpc_url.replace("http://", "ws://", 1),
                EXTRA_CONTRACTS=chain.contract,
                CONFIRMATIONS="0",
                POLL_INTERVAL="0.05",
                METRICS_PORT="0",
                LOG_LEVEL="WARNING",
                RATE_LIMIT_READS="off",
                RATE_LIMIT_WRITES="off",
                WS_MAX_PER_IP="5000",
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
            processes.append(indexer)
            # Warm up: a first block through the indexer, so the outbox is not empty.
            await chain.block(args.per_block)
            await asyncio.sleep(3)
            stack = Stack(
                dsn,
                chain,
                indexer.pid,
                commits_path,
                args.clients,
                args.seconds,
                args.per_block,
                None if args.compression == "none" else args.compression,
            )
            for workers in args.workers:
                port = free_port()
                env = dict(base_env, HTTP_PORT=str(port))
                argv = [str(BIN / "discograph"), "api", "--workers", str(workers)]
                health = f"http://127.0.0.1:{port}/health/live"
                name = f"discograph, {workers} worker{'s' if workers > 1 else ''}"
                with server(f"api-w{workers}", argv, env, folder, health) as api:
                    results.append(await measure(stack, name, port, api.pid))
                if workers == args.workers[0] and not args.no_ceiling:
                    port = free_port()
                    env = dict(base_env, FEED_CEILING_DSN=dsn, PYTHONPATH=str(REPO_ROOT))
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
                    root = f"http://127.0.0.1:{port}/"
                    with server("ceiling", argv, env, folder, root) as ceiling:
                        name = "ceiling (bare Litestar fan-out)"
                        results.append(await measure(stack, name, port, ceiling.pid))
    finally:
        for process in reversed(processes):
            process.stop()
        anvil.stop()
        valkey.stop()
        postgres.stop()
    shutil.rmtree(folder, ignore_errors=True)  # kept, with the servers' logs, after a failure
    return results


def report(results: list[Result], args: argparse.Namespace, load_before: float) -> None:
    print()
    load = f"{os.cpu_count()} cores, load {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    print(
        f"feed: {args.clients} clients, {args.per_block} transfers/block, 1 block/s,"
        f" {args.seconds:g} s each, compression {args.compression}; {load}"
    )
    head = (
        f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'msgs/s':>8} {'RSS MiB':>7}"
        f" {'srv%':>5} {'idx%':>5} {'cli%':>5} {'all%':>5} {'lag ms':>10}"
    )
    print(f"{'server':<32} {head}  delivery")
    for r in results:
        lag = f"{r.lag_p99 * 1000:.0f} / {r.lag_max * 1000:.0f}"
        ok = f"all {r.messages:,} delivered" if not r.problems else f"{len(r.problems)} problems"
        figures = (
            f"{r.p50 * 1000:>7.1f} {r.p99 * 1000:>7.1f} {r.worst * 1000:>7.1f} {r.rate:>8,.0f}"
            f" {r.rss_mib:>7.0f} {r.cpu['server']:>5.0f} {r.cpu['indexer']:>5.0f}"
            f" {r.cpu['bench']:>5.0f} {r.cpu['machine']:>5.0f} {lag:>10}"
        )
        print(f"{r.name:<32} {figures}  {ok}")
    print(
        "CPU in % of one core over the window (srv: the server's processes, idx: the indexer,"
        " cli: this client process, all: the machine); lag: p99 / max of how late a 5 ms timer"
        " fired in the clients' event loop"
    )
    for r in results:
        print(
            f"{r.name}: {r.clients} clients, a frame of {r.frame_bytes / 1024:.1f} KiB on average"
        )
    for r in results:
        first, mid, last = (v * 1000 for v in r.warmup)
        print(
            f"{r.name}: warm-up block (not in the figures) reached the first / p50 / last"
            f" client in {first:.1f} / {mid:.1f} / {last:.1f} ms"
        )
    for r in results:
        if r.publish:
            delays = sorted(r.publish.values())
            mid, worst = delays[len(delays) // 2] * 1000, delays[-1] * 1000
            print(f"{r.name}: commit → on Redis, median {mid:.1f} ms, max {worst:.1f} ms")
    for r in results:
        if len(r.spread) > 1:
            print(f"{r.name}: connections per worker {r.spread}")
    ceiling = next((r for r in results if r.name.startswith("ceiling")), None)
    if ceiling is not None:
        for r in results:
            if r is not ceiling:
                print(f"p99 ratio {r.name} / ceiling: {r.p99 / ceiling.p99:.2f} (target ≤ 1.5)")
    if args.details:
        for r in results:
            print(
                f"{r.name}, by commit: messages; on Redis (discograph's publisher); reached"
                " the first / p50 / last client, ms after the commit"
            )
            for committed, pairs in sorted(r.batches.items()):
                pairs.sort()
                n = sum(w for _, w in pairs) // r.clients
                first, mid, last = pairs[0][0], percentile(pairs, 0.5), pairs[-1][0]
                clock = time.strftime("%H:%M:%S", time.localtime(committed))
                ms = f"{first * 1000:6.1f} {mid * 1000:6.1f} {last * 1000:6.1f}"
                published = r.publish.get(committed)
                on_redis = f"{published * 1000:6.1f}" if published is not None else "     -"
                print(f"  {clock} {n:>4} msgs: {on_redis} | {ms}")
    for r in results:
        for problem in r.problems[:5]:
            print(f"  {r.name}: {problem}")


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--clients", type=int, default=1000, help="websocket clients (1000)")
    parser.add_argument("--seconds", type=float, default=30.0, help="blocks sent per phase (30)")
    parser.add_argument("--per-block", type=int, default=100, help="transfers a block (100)")
    parser.add_argument(
        "--workers",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 2],
        help="`discograph api --workers` of each discograph phase (1,2)",
    )
    parser.add_argument("--no-ceiling", action="store_true", help="skip the ceiling's phase")
    parser.add_argument(
        "--compression",
        choices=("deflate", "none"),
        default="deflate",
        help="the clients' permessage-deflate offer (deflate, as browsers)",
    )
    parser.add_argument("--details", action="store_true", help="latencies of each block")
    parser.add_argument(
        "--listen-commits", nargs=3, metavar=("DSN", "REDIS_URL", "FILE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.listen_commits:
        dsn, redis_url, path = args.listen_commits
        with open(path, "a", buffering=1) as out:  # a line per write: nothing lost on SIGTERM
            uvloop.run(listen_commits(dsn, redis_url, out))
        return
    load_before = os.getloadavg()[0]
    results = uvloop.run(run(args))
    report(results, args, load_before)
    if any(r.problems for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
