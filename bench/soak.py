"""Soak: the whole stack for N minutes under steady load, with restart drills on a timer, then
the invariants.

    .venv/bin/python -m bench.soak [--minutes 30] [--read-rate 40] [--drill-every 180]
                                   [--plot docs/soak.png]

What runs (all real, all on this machine): an embedded Postgres and Valkey on fixed ports (so
they can be restarted in place), anvil (automine), two `discograph index` processes (one
active through the lease, one hot standby), two `discograph api` processes and one
`discograph minter`.

Load, steady for the whole run:
- the chain: a mint, transfer or metadata change (`setTokenURI`) every `--chain-every` s, and
  every `--reorg-every` s a reorg of depth 1-8 (`evm_snapshot` / `evm_revert`, then a longer
  branch). Mint transactions the minter had mined in the orphaned blocks are dropped with them;
- writes: an album created and its mint queued (`POST /albums/mint`) every `--write-every` s,
  through the two APIs in turn;
- reads: `--read-rate` GETs per second (open loop: a slow answer does not slow the arrivals),
  NFTs, owners' lists, transfers and albums, spread over the two APIs.

Drills, one every `--drill-every` s, in turn: Postgres restarted (3 s down), Valkey restarted
(3 s down), the active indexer SIGKILLed (the standby takes over; the killed one comes back as
the new standby), the minter SIGKILLed and started again.

Every `--sample-every` s a row: reads/s, p50 and p99 latency, 503s (the documented answer
while Postgres is down), other 5xx, connection errors, the RSS of every process, open Postgres
connections and Redis clients. The table is printed, and plotted to `--plot` (PNG).

At the end (the load stopped, 70 blocks mined so that every block is final): every mint
request is final, the minter's nonces have no gap, the projection equals a fresh index of the
same chain (a new database, `discograph index --until head` in process), no 5xx but the
documented 503s. Exit status 1 when an invariant fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import random
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from chain.album import grant_minter
from chain.rpc import RpcClient, to_int
from chain.signer import Signer
from db.engine import ensure_database, migrate, with_database
from discograph.embedded import EmbeddedPostgres, EmbeddedValkey, start_postgres, start_valkey
from discograph.localchain import ANVIL_DEV_KEYS, start_anvil
from discograph.processes import ChildProcess, free_port
from discograph.settings import Settings, load_settings
from indexer.progress import Progress
from indexer.service import run_indexer
from indexer.sync import HEAD

REPO_ROOT = Path(__file__).resolve().parents[1]
JWT_SECRET = secrets.token_urlsafe(32)  # this run only
MINTER_KEY = ANVIL_DEV_KEYS[1]
SETTINGS_VARS = {name.upper() for name in Settings.__struct_fields__}
STANDBY = "hot standby"
TOOK_OVER = "took over as the active indexer"
DRILLS = ("postgres", "redis", "indexer", "minter")


def _token(subject: str, role: str) -> str:
    import jwt

    now = int(time.time())
    claims = {"sub": subject, "role": role, "iat": now, "exp": now + 24 * 3600}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _tree_rss_mib(root: int) -> float:
    """RSS of a process and its children (Postgres: the postmaster and every backend)."""
    total = _rss_mib(root)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == root:
                    total += _rss_mib(int(entry.name))
    return total


def percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


@dataclass
class Read:
    at: float
    ms: float
    status: int  # 0: no answer (connection refused/reset)
    retry_after: bool


@dataclass
class Sample:
    at: float
    reads: int
    p50: float
    p99: float
    s503: int
    s5xx: int
    refused: int
    rss: dict[str, float]
    pg_connections: int
    redis_clients: int


@dataclass
class Stack:
    folder: Path
    pg: EmbeddedPostgres
    pg_port: int
    valkey: EmbeddedValkey
    valkey_port: int
    database_url: str
    env: dict[str, str]
    indexers: list[ChildProcess] = field(default_factory=list)
    apis: list[ChildProcess] = field(default_factory=list)
    api_urls: list[str] = field(default_factory=list)
    minter: ChildProcess | None = None
    generation: int = 0

    def start(self, kind: str, command: str, **extra: str) -> ChildProcess:
        self.generation += 1
        name = f"{kind}-{self.generation}"
        env = {**self.env, **extra}
        argv = [sys.executable, "-m", "discograph.cli", "--env-file", "/dev/null", command]
        return ChildProcess(
            name, argv, log_path=self.folder / f"{name}.log", env=env, cwd=self.folder
        )

    def active_indexer(self) -> ChildProcess | None:
        for process in self.indexers:
            text = process.log_path.read_text(errors="replace")
            if process.running() and (STANDBY not in text or TOOK_OVER in text):
                return process
        return None


class Soak:
    def __init__(self, args: argparse.Namespace, stack: Stack, rpc: RpcClient) -> None:
        self.args = args
        self.stack = stack
        self.rpc = rpc
        self.rng = random.Random(args.seed)
        self.stop = asyncio.Event()
        self.started = time.monotonic()
        self.reads: list[Read] = []
        self.samples: list[Sample] = []
        self.drills: list[tuple[float, str, str]] = []  # time, drill, what happened
        self.mint_ids: list[str] = []
        self.write_statuses: Counter[int] = Counter()
        self.reorgs: list[int] = []
        self.tokens: list[tuple[str, int]] = []
        self.owners: dict[tuple[str, int], str] = {}
        self.contract = ""
        self.signers = [Signer(k) for k in ANVIL_DEV_KEYS if k != MINTER_KEY]

    def now(self) -> float:
        return time.monotonic() - self.started

    # --- load -----------------------------------------------------------------------------

    async def chain(self) -> None:
        from tests.indexing import ChainDriver

        driver = ChainDriver(self.rpc, self.signers, self.rng, contracts=[self.contract])
        driver.owners = dict(self.owners)
        next_reorg = self.args.reorg_every
        while not self.stop.is_set():
            if self.now() >= next_reorg:
                next_reorg += self.args.reorg_every
                await self._reorg(driver)
            else:
                await driver.random_activity(1, metadata=0.2)
            self.tokens = sorted(driver.owners)
            await asyncio.sleep(self.args.chain_every)

    async def _reorg(self, driver: Any) -> None:
        depth = self.rng.randint(1, 8)
        # anvil's snapshot and revert are not atomic with automining: a minter transaction
        # mined at that moment can stay in the state without a block (its nonce used, no log).
        # With automine off, what arrives waits in the pool instead.
        rpc = self.rpc
        await rpc.call("evm_setAutomine", [False])
        await rpc.call("anvil_mine", ["0x1"])  # what was pending goes into a block first
        snapshot = await rpc.call("evm_snapshot")
        await rpc.call("evm_setAutomine", [True])
        saved = driver.snapshot()
        await driver.random_activity(depth, metadata=0.2)
        await asyncio.sleep(0.5)  # let the indexers and the minter see the doomed branch
        await rpc.call("evm_setAutomine", [False])
        assert await rpc.call("evm_revert", [snapshot]) is True
        await rpc.call("evm_setAutomine", [True])
        driver.restore(saved)
        await driver.random_activity(depth, metadata=0.2)
        await self.rpc.call("anvil_mine", ["0x1"])
        self.reorgs.append(depth)

    async def writes(self, artist_id: str) -> None:
        headers = {"Authorization": f"Bearer {_token('soak-admin', 'admin')}"}
        number = 0
        async with httpx.AsyncClient(timeout=30) as client:
            while not self.stop.is_set():
                url = self.stack.api_urls[number % len(self.stack.api_urls)]
                body = {
                    "title": f"Soak album {number}",
                    "tracks": [{"title": "One"}, {"title": "Two"}],
                    "artist_id": artist_id,
                    "to": self.signers[number % len(self.signers)].address,
                }
                number += 1
                try:
                    answer = await client.post(f"{url}/albums/mint", json=body, headers=headers)
                except httpx.TransportError:
                    self.write_statuses[0] += 1
                else:
                    self.write_statuses[answer.status_code] += 1
                    if answer.status_code == 202:
                        self.mint_ids.append(answer.json()["mint_id"])
                await asyncio.sleep(self.args.write_every)

    def _read_path(self) -> str:
        roll = self.rng.random()
        if roll < 0.5 and self.tokens:
            contract, token = self.rng.choice(self.tokens)
            return f"/nfts/{contract}/{token}"
        if roll < 0.75:
            return f"/owners/{self.rng.choice(self.signers).address}/nfts?limit=50"
        if roll < 0.9:
            return f"/transfers?contract={self.contract}&limit=50"
        return "/albums?limit=20"

    async def reads_loop(self) -> None:
        # Idle connections are dropped after 2 s, before the server's 5 s keep-alive timeout:
        # a request on a connection the server is closing would fail on the client's side.
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=32, keepalive_expiry=2)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            tasks: set[asyncio.Task[None]] = set()
            interval = 1 / self.args.read_rate
            due = time.monotonic()
            number = 0
            while not self.stop.is_set():
                url = self.stack.api_urls[number % len(self.stack.api_urls)]
                number += 1
                task = asyncio.create_task(self._read(client, url + self._read_path()))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                due += interval
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            await asyncio.gather(*tasks)

    async def _read(self, client: httpx.AsyncClient, url: str) -> None:
        sent = time.monotonic()
        try:
            answer = await client.get(url)
        except httpx.TransportError:
            self.reads.append(Read(self.now(), (time.monotonic() - sent) * 1000, 0, False))
            return
        ms = (time.monotonic() - sent) * 1000
        self.reads.append(Read(self.now(), ms, answer.status_code, "retry-after" in answer.headers))

    # --- drills ---------------------------------------------------------------------------

    async def drills_loop(self) -> None:
        number = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.args.drill_every)
            if self.stop.is_set():
                return
            drill = DRILLS[number % len(DRILLS)]
            number += 1
            at = self.now()
            what = await getattr(self, f"_drill_{drill}")()
            self.drills.append((at, drill, what))
            print(f"  [{at:7.1f} s] drill {drill}: {what}", flush=True)

    async def _drill_postgres(self) -> str:
        stack = self.stack
        stack.pg.stop()
        await asyncio.sleep(3)
        stack.pg = start_postgres(stack.pg.data_dir, port=stack.pg_port)
        return "stopped (fast shutdown), 3 s down, started again on the same port"

    async def _drill_redis(self) -> str:
        stack = self.stack
        stack.valkey.stop()
        await asyncio.sleep(3)
        stack.valkey = start_valkey(stack.folder / "valkey", port=stack.valkey_port)
        return "stopped, 3 s down, started again on the same port"

    async def _drill_indexer(self) -> str:
        stack = self.stack
        active = stack.active_indexer()
        if active is None:
            return "no active indexer found: skipped"
        killed_at = time.monotonic()
        active.popen.send_signal(signal.SIGKILL)
        active.popen.wait(10)
        stack.indexers.remove(active)
        standby = stack.indexers[0]
        while TOOK_OVER not in standby.log_path.read_text(errors="replace"):
            if time.monotonic() - killed_at > 30:
                return f"SIGKILL {active.name}: the standby did NOT take over within 30 s"
            await asyncio.sleep(0.05)
        took = time.monotonic() - killed_at
        stack.indexers.append(stack.start("indexer", "index", **self.indexer_env()))
        return f"SIGKILL {active.name}: {standby.name} took over in {took:.1f} s; restarted"

    async def _drill_minter(self) -> str:
        stack = self.stack
        assert stack.minter is not None
        stack.minter.popen.send_signal(signal.SIGKILL)
        stack.minter.popen.wait(10)
        stack.minter = stack.start("minter", "minter", **self.minter_env())
        return "SIGKILL, started again"

    def indexer_env(self) -> dict[str, str]:
        return {"CONFIRMATIONS": "0", "LOG_LEVEL": "INFO"}

    def minter_env(self) -> dict[str, str]:
        return {"MINTER_PRIVATE_KEY": MINTER_KEY, "CONFIRMATIONS": "1", "LOG_LEVEL": "INFO"}

    # --- sampling -------------------------------------------------------------------------

    async def sampler(self) -> None:
        begin = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.args.sample_every)
            end = self.now()
            window = [r for r in self.reads if begin <= r.at < end]
            begin = end
            self.samples.append(await self._sample(end, window))
            self._print_row(self.samples[-1])
            if self.stop.is_set():
                return

    async def _sample(self, at: float, window: list[Read]) -> Sample:
        answered = sorted(r.ms for r in window if r.status)
        stack = self.stack
        rss = {
            "api-1": _rss_mib(stack.apis[0].pid),
            "api-2": _rss_mib(stack.apis[1].pid),
            "indexers": sum(_rss_mib(p.pid) for p in stack.indexers if p.running()),
            "minter": _rss_mib(stack.minter.pid) if stack.minter else 0.0,
            "postgres": _tree_rss_mib(stack.pg.process.pid),
            "valkey": _rss_mib(stack.valkey.process.pid),
        }
        pg_connections = redis_clients = -1
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            conn = await asyncpg.connect(stack.database_url, timeout=2)
            try:
                pg_connections = int(
                    await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    )
                    - 1  # this one
                )
            finally:
                await conn.close()
        with contextlib.suppress(Exception):
            from redis.asyncio import Redis

            redis = Redis.from_url(stack.valkey.url(), socket_timeout=2)
            try:
                redis_clients = int((await redis.info("clients"))["connected_clients"]) - 1
            finally:
                await redis.aclose()

        return Sample(
            at=at,
            reads=len(window),
            p50=percentile(answered, 0.5),
            p99=percentile(answered, 0.99),
            s503=sum(1 for r in window if r.status == 503),
            s5xx=sum(1 for r in window if r.status >= 500 and r.status != 503),
            refused=sum(1 for r in window if r.status == 0),
            rss=rss,
            pg_connections=pg_connections,
            redis_clients=redis_clients,
        )

    def _print_row(self, s: Sample) -> None:
        if len(self.samples) == 1:
            print(
                f"{'t(s)':>7} {'reads/s':>7} {'p50ms':>7} {'p99ms':>7} {'503':>5} {'5xx':>4}"
                f" {'refused':>7} {'api1MiB':>7} {'api2MiB':>7} {'idxMiB':>7} {'mintMiB':>7}"
                f" {'pgMiB':>7} {'pgconn':>6} {'redis':>5}"
            )
        span = self.args.sample_every
        print(
            f"{s.at:7.0f} {s.reads / span:7.1f} {s.p50:7.1f} {s.p99:7.1f} {s.s503:5d}"
            f" {s.s5xx:4d} {s.refused:7d} {s.rss['api-1']:7.0f} {s.rss['api-2']:7.0f}"
            f" {s.rss['indexers']:7.0f} {s.rss['minter']:7.0f} {s.rss['postgres']:7.0f}"
            f" {s.pg_connections:6d} {s.redis_clients:5d}",
            flush=True,
        )


async def _wait(check: Any, timeout: float, what: str) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if await check():
                return True
        await asyncio.sleep(0.2)
    print(f"  timed out after {timeout:.0f} s waiting for {what}")
    return False


async def _invariants(soak: Soak, settings: Settings) -> list[str]:
    """Each failed invariant, described; empty when all hold."""
    from tests.indexing import projection, projection_differences

    failures: list[str] = []
    stack, rpc = soak.stack, soak.rpc
    await rpc.call("anvil_mine", [hex(70)])  # anvil's finalized block: head - 64
    conn = await asyncpg.connect(stack.database_url)
    try:

        async def all_final() -> bool:
            open_ = await conn.fetchval(
                "SELECT count(*) FROM mint_requests WHERE status NOT IN ('finalized', 'failed')"
            )
            return int(open_) == 0

        if not await _wait(all_final, 180, "every mint request final"):
            rows = await conn.fetch("SELECT status, count(*) FROM mint_requests GROUP BY 1")
            failures.append(f"mint requests not final: {[tuple(r) for r in rows]}")
        statuses = Counter(
            r["status"] for r in await conn.fetch("SELECT status FROM mint_requests")
        )
        if statuses.get("failed"):
            errors = await conn.fetch(
                "SELECT error, count(*) FROM mint_requests WHERE status = 'failed' GROUP BY 1"
            )
            failures.append(f"failed mint requests: {[tuple(r) for r in errors]}")
        if sum(statuses.values()) != len(soak.mint_ids):
            failures.append(f"{sum(statuses.values())} mint requests, {len(soak.mint_ids)} queued")
        nonces = sorted(
            r["nonce"]
            for r in await conn.fetch("SELECT nonce FROM mint_requests WHERE nonce IS NOT NULL")
        )
        sent = to_int(
            await rpc.call("eth_getTransactionCount", [Signer(MINTER_KEY).address, "latest"])
        )
        if nonces != list(range(sent)):
            failures.append(f"nonce gap: {sent} transactions sent, request nonces {nonces[:20]}…")
        head = to_int(await rpc.call("eth_blockNumber"))

        async def synced() -> bool:
            return int(await conn.fetchval("SELECT block_number FROM checkpoints") or -1) >= head

        if not await _wait(synced, 60, "the indexer to reach the head"):
            failures.append("the live indexer did not reach the head")
    finally:
        await conn.close()
    fresh = with_database(stack.pg.dsn(), "soak_fresh")
    await ensure_database(fresh)
    await migrate(fresh)
    await run_indexer(settings, fresh, until=HEAD, progress=Progress(io.StringIO()))
    live, rebuilt = await projection(stack.database_url), await projection(fresh)
    if live != rebuilt:
        failures.append(
            "the projection differs from a fresh index of the same chain: "
            + projection_differences(live, rebuilt)
        )
    other_5xx = [r for r in soak.reads if r.status >= 500 and r.status != 503]
    if other_5xx:
        failures.append(f"{len(other_5xx)} 5xx answers other than 503")
    bare_503 = [r for r in soak.reads if r.status == 503 and not r.retry_after]
    if bare_503:
        failures.append(f"{len(bare_503)} 503 answers without Retry-After")
    if soak.write_statuses.keys() - {202, 503, 0}:
        failures.append(f"unexpected write answers: {dict(soak.write_statuses)}")
    return failures


def _plot(soak: Soak, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = soak.samples
    minutes = [s.at / 60 for s in samples]
    fig, (lat, mem, conns) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    lat.plot(minutes, [s.p99 for s in samples], label="p99")
    lat.plot(minutes, [s.p50 for s in samples], label="p50")
    lat.set_ylabel("read latency (ms)")
    lat.set_yscale("log")
    lat.legend(loc="upper right")
    for name in samples[0].rss:
        mem.plot(minutes, [s.rss[name] for s in samples], label=name)
    mem.set_ylabel("RSS (MiB)")
    mem.legend(loc="upper left", ncol=3, fontsize="small")
    conns.plot(minutes, [s.pg_connections for s in samples], label="Postgres connections")
    conns.plot(minutes, [s.redis_clients for s in samples], label="Redis clients")
    conns.set_ylabel("open connections")
    conns.set_xlabel("minutes")
    conns.legend(loc="upper left", fontsize="small")
    for at, drill, _ in soak.drills:
        for axis in (lat, mem, conns):
            axis.axvline(at / 60, color="grey", alpha=0.3, linestyle="--")
        lat.annotate(drill, (at / 60, lat.get_ylim()[1]), fontsize=7, rotation=90, va="top")
    fig.suptitle(
        f"Discograph soak: {soak.args.minutes:g} min, {soak.args.read_rate:g} reads/s,"
        f" {len(soak.reorgs)} reorgs, {len(soak.drills)} restart drills"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


async def run(args: argparse.Namespace, folder: Path) -> int:
    pg_port, valkey_port = free_port(), free_port()
    pg = start_postgres(folder / "pg", port=pg_port)
    valkey = start_valkey(folder / "valkey", port=valkey_port)
    # Every block's state kept: the fresh index at the end reads tokenURI as of old blocks
    # (anvil keeps 500 states in memory and 3,600 on disk by default).
    anvil = start_anvil(folder, extra_args=("--max-persisted-states", "1000000"))
    database_url = with_database(pg.dsn(), "soak")
    await ensure_database(database_url)
    await migrate(database_url)
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARS}
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        DATABASE_URL=database_url,
        REDIS_URL=valkey.url(),
        RPC_URL=anvil.rpc_url,
        POLL_INTERVAL="0.1",
        METRICS_PORT="0",
        JWT_SECRET=JWT_SECRET,
        RATE_LIMIT_READS="off",
        RATE_LIMIT_WRITES="off",
        LOG_LEVEL="WARNING",
    )
    stack = Stack(folder, pg, pg_port, valkey, valkey_port, database_url, env)
    status = 1
    try:
        async with RpcClient(anvil.rpc_url) as rpc:
            status = await _soak(args, stack, rpc, anvil.rpc_url)
    finally:
        for process in [*stack.apis, *stack.indexers, *([stack.minter] if stack.minter else [])]:
            process.stop()
        anvil.stop()
        stack.valkey.stop()
        stack.pg.stop()
    return status


async def _soak(args: argparse.Namespace, stack: Stack, rpc: RpcClient, rpc_url: str) -> int:
    from tests.indexing import ChainDriver

    soak = Soak(args, stack, rpc)
    setup = ChainDriver(rpc, soak.signers, soak.rng)
    (soak.contract,) = await setup.deploy(1)
    await grant_minter(rpc, soak.signers[0], soak.contract, Signer(MINTER_KEY).address)
    await setup.random_activity(20)
    soak.owners = dict(setup.owners)
    soak.tokens = sorted(setup.owners)
    stack.env["ALBUM_CONTRACT"] = soak.contract
    for _ in range(2):
        stack.indexers.append(stack.start("indexer", "index", **soak.indexer_env()))
    stack.minter = stack.start("minter", "minter", **soak.minter_env())
    for _ in range(2):
        port = free_port()
        stack.apis.append(stack.start("api", "api", HTTP_PORT=str(port)))
        stack.api_urls.append(f"http://127.0.0.1:{port}")
    async with httpx.AsyncClient(timeout=5) as client:

        async def serving() -> bool:
            try:
                answers = [await client.get(f"{u}/health/live") for u in stack.api_urls]
            except httpx.TransportError:
                return False
            return all(a.status_code == 200 for a in answers)

        if not await _wait(serving, 60, "the API processes"):
            return 1
        artist = await client.post(
            f"{stack.api_urls[0]}/artists",
            json={"name": "Soak"},
            headers={"Authorization": f"Bearer {_token('soak-admin', 'admin')}"},
        )
        artist.raise_for_status()
    print(
        f"soak: {args.minutes:g} min, {args.read_rate:g} reads/s, a chain op every"
        f" {args.chain_every:g} s, a reorg every {args.reorg_every:g} s, a mint every"
        f" {args.write_every:g} s, a drill every {args.drill_every:g} s; logs in {stack.folder}",
        flush=True,
    )
    soak.started = time.monotonic()
    workers = [
        asyncio.create_task(soak.chain()),
        asyncio.create_task(soak.writes(artist.json()["id"])),
        asyncio.create_task(soak.reads_loop()),
        asyncio.create_task(soak.drills_loop()),
        asyncio.create_task(soak.sampler()),
    ]
    try:
        await asyncio.sleep(args.minutes * 60)
    finally:
        soak.stop.set()
        await asyncio.gather(*workers, return_exceptions=False)
    settings = load_settings(
        {
            "RPC_URL": rpc_url,
            "ALBUM_CONTRACT": soak.contract,
            "CONFIRMATIONS": "0",
            "METRICS_PORT": "0",
            "LOG_LEVEL": "WARNING",
        },
        env_file=None,
    )
    failures = await _invariants(soak, settings)
    _report(soak)
    if args.plot:
        _plot(soak, Path(args.plot))
        print(f"plot: {args.plot}")
    for process in [*stack.apis, *stack.indexers, stack.minter]:
        if process is not None and "Traceback" in process.log_path.read_text(errors="replace"):
            failures.append(f"a traceback in {process.log_path}")
    if failures:
        print("INVARIANTS FAILED:\n  " + "\n  ".join(failures))
        return 1
    print(
        "invariants hold: every mint request final, no nonce gap, projection = fresh index,"
        " no 5xx but 503 with Retry-After"
    )
    return 0


def _report(soak: Soak) -> None:
    reads = soak.reads
    answered = sorted(r.ms for r in reads if r.status)
    statuses = Counter(r.status for r in reads)

    def p(share: float) -> float:
        return percentile(answered, share)

    steady = [s.p99 for s in soak.samples]
    first, last = soak.samples[0], soak.samples[-1]
    print(
        f"reads: {len(reads)} ({dict(sorted(statuses.items()))}); latency p50 {p(0.5):.1f} ms,"
        f" p99 {p(0.99):.1f} ms, median of the per-interval p99s"
        f" {statistics.median(steady):.1f} ms, max {max(steady):.1f} ms"
    )
    print(
        f"writes: {dict(sorted(soak.write_statuses.items()))}; {len(soak.mint_ids)} mints queued;"
        f" {len(soak.reorgs)} reorgs (depths {dict(sorted(Counter(soak.reorgs).items()))});"
        f" {len(soak.drills)} drills"
    )
    print(
        "RSS MiB first → last interval: "
        + ", ".join(f"{k} {first.rss[k]:.0f} → {last.rss[k]:.0f}" for k in first.rss)
        + f"; Postgres connections {first.pg_connections} → {last.pg_connections},"
        f" Redis clients {first.redis_clients} → {last.redis_clients}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--read-rate", type=float, default=40.0, help="GETs per second")
    parser.add_argument("--chain-every", type=float, default=0.5)
    parser.add_argument("--reorg-every", type=float, default=30.0)
    parser.add_argument("--write-every", type=float, default=2.0)
    parser.add_argument("--drill-every", type=float, default=180.0)
    parser.add_argument("--sample-every", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=20261204)
    parser.add_argument("--plot", default=".discograph/soak.png", help="PNG path ('' for none)")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="discograph-soak-"))
    return asyncio.run(run(args, folder))


if __name__ == "__main__":
    sys.exit(main())
