"""Read API benchmark: requests/s, p50 and p99 of the hot read routes, response cache cold and
warm, against the ceiling of the same server (a bare route doing one Redis GET), same run.

    .venv/bin/python -m bench.api [--seconds 10] [--connections 16] [--workers 2]

Load comes from `wrk` (Debian package `wrk`: `apt-get install -y wrk`), run on this machine
with one connection per wrk thread, so that every answer is matched with its request and
checked against the database (a fast wrong server cannot win).

Data: the chain of `bench.backfill` (100,000 Transfer events, 70,000 tokens among 1,000
holders; built once and cached in `bench/.cache/`), indexed with `discograph index --until head`
into a fresh database on an embedded Postgres (fsync off) unless `BENCH_DATABASE_URL` names a
server. The response cache is an embedded Valkey, emptied with FLUSHDB before each cold run;
with `BENCH_REDIS_URL` the run uses a namespace of its own and deletes only that.

Servers: `uvicorn bench.api:app_factory --factory --workers N` (the real app of `api.app`, from
DATABASE_URL / REDIS_URL) and `uvicorn bench.ceiling:app_factory --factory --workers N`, both
through `uvicorn_main`, which gives the shared listening socket TCP_NODELAY (uvicorn's own
`--workers` path leaves Nagle on: ~44 ms per keep-alive request; `--stock-uvicorn` shows it).
The fresh database gets VACUUM ANALYZE before the load, as autovacuum would in time
(`--no-analyze` measures without: the NFT lookup then scans the whole contract).

Each route is measured twice for `--seconds`: cold (cache emptied, keys never repeated: every
token, owner page or transfer page once) and warm (a small set of keys, requested over and over
after one warming pass; the `X-Cache: hit` share is printed). Postgres' own buffers are warm in
both: "cold" is about the response cache.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
from litestar import Litestar
from redis.asyncio import Redis

from api.params import encode_cursor
from bench.backfill import (
    ChainInfo,
    cache_paths,
    ensure_chain,
    fresh_database,
    read_owners,
    run_discograph,
    server_facts,
)
from chain.rpc import RpcClient
from db import chain_reads
from discograph.embedded import start_postgres, start_valkey
from discograph.encoding import checksum_address
from discograph.localchain import ANVIL_CHAIN_ID, Anvil, start_anvil
from discograph.processes import (
    ChildProcess,
    ServiceStartError,
    die_with_parent,
    exit_cleanly_on_sigterm,
    free_port,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
PAGE = 50  # the routes' default page size, and `limit=50` of /transfers
WARM_KEYS = 64
SAMPLE = 100  # answers per route checked field by field before the load
WARMUP_SECONDS = 2
SEED = 20_240_612
MIN_TRANSFERS, MIN_TOKENS = 100_000, 20_000
WRK_INSTALL = "apt-get install -y wrk   (Debian/Ubuntu; on macOS: brew install wrk)"

# One wrk thread per connection: request() and response() then alternate in each thread's Lua
# state, so each answer is checked for the substring its own request expects. Thread k takes
# lines k, k + T, k + 2T ... of the keys file, so cold keys are not repeated until they wrap.
WRK_SCRIPT = r"""
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  local stride, mine, count = tonumber(args[2]), id, 0
  for _ in io.lines(args[1]) do count = count + 1 end
  if count < stride then stride, mine = 1, 0 end -- fewer keys than threads: all take all
  paths, expects = {}, {}
  local n = 0
  for line in io.lines(args[1]) do
    if n % stride == mine then
      local tab = line:find("\t", 1, true)
      paths[#paths + 1] = line:sub(1, tab - 1)
      expects[#expects + 1] = line:sub(tab + 1)
    end
    n = n + 1
  end
  nextkey = (id - mine) % #paths -- threads sharing all the keys start at different ones
  current = 1
  sent, answered, hits, non200, wrong, wrapped = 0, 0, 0, 0, 0, 0
  first_wrong = ""
end

function request()
  if nextkey >= #paths then wrapped = 1 end
  current = nextkey % #paths + 1
  nextkey = nextkey + 1
  sent = sent + 1
  return wrk.format("GET", paths[current])
end

function response(status, headers, body)
  answered = answered + 1
  if status ~= 200 then
    non200 = non200 + 1
    if first_wrong == "" then first_wrong = status .. " " .. paths[current] end
    return
  end
  local cache = headers["x-cache"] or headers["X-Cache"]
  if cache == "hit" then hits = hits + 1 end
  if not body:find(expects[current], 1, true) then
    wrong = wrong + 1
    if first_wrong == "" then first_wrong = "wrong body " .. paths[current] end
  end
end

function done(summary, latency, requests)
  local total = {sent = 0, answered = 0, hits = 0, non200 = 0, wrong = 0, wrapped = 0}
  local first = ""
  for _, thread in ipairs(threads) do
    for name, value in pairs(total) do total[name] = value + thread:get(name) end
    if first == "" then first = thread:get("first_wrong") end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"timeout":%d,"sent":%d,"answered":%d,"hits":%d,' ..
    '"non200":%d,"wrong":%d,"wrapped":%d,"first_wrong":"%s"}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.timeout, total.sent, total.answered, total.hits,
    total.non200, total.wrong, total.wrapped, first:gsub('[%c"\\]', "?")))
end
"""


def uvicorn_main() -> None:
    """`uvicorn` (its command line from sys.argv), with the listening socket made as uvicorn's
    single-process path makes it.

    With `--workers N` uvicorn binds the socket itself with `proto` 0; accepted sockets inherit
    it and asyncio enables TCP_NODELAY only when `proto == IPPROTO_TCP`, so Nagle stays on and
    each keep-alive request after the first waits ~40 ms for the client's delayed ACK (uvicorn
    issue #3149, fix proposed in #3155). This re-labels the bound socket IPPROTO_TCP, as #3155 does.
    """
    import socket

    import uvicorn
    from uvicorn.config import Config

    from discograph.apiserver import tcp_socket

    bind_socket = Config.bind_socket

    def bind_tcp_socket(self: Config) -> socket.socket:
        return tcp_socket(bind_socket(self))

    Config.bind_socket = bind_tcp_socket  # type: ignore[method-assign]
    uvicorn.main()


def app_factory() -> Litestar:
    """uvicorn `--factory` entry point: the real API from DATABASE_URL and REDIS_URL."""
    from api.app import create_app
    from discograph.settings import load_settings

    die_with_parent()
    settings = load_settings(env_file=None)
    if settings.database_url is None:
        raise SystemExit("DATABASE_URL is not set")
    namespace = os.environ.get("BENCH_CACHE_NAMESPACE", "discograph:bench")
    return create_app(settings, settings.database_url, cache_namespace=namespace)


# ---------------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class Key:
    path: str
    expect: str  # a substring of the right answer, checked on every response under load
    ref: Any  # what the field-by-field check of this key needs


@dataclass
class Route:
    name: str
    title: str
    cold: list[Key]
    warm: list[Key]
    verify: Callable[[Key, Any], str | None]  # the problem with a decoded answer, or None


@dataclass(frozen=True)
class Dataset:
    transfers: int
    tokens: int
    holders: int


def _nft_expect(token: int, owner: str) -> str:
    # Field order of api.nft_schemas.Nft: ..., token_id, owner, ...
    return f'"token_id":"{token}","owner":"{owner}"'


def _transfer_expect(block: int, log_index: int) -> str:
    # Field order of api.nft_schemas.Transfer: ..., log_index, block_number, block_hash, ...
    return f'"log_index":{log_index},"block_number":{block},'


async def load_keys(dsn: str, info: ChainInfo) -> tuple[list[Route], Dataset]:
    """Every route's keys, from the indexed rows, with what a right answer holds."""
    contract_raw = bytes.fromhex(info.contract[2:])
    conn = await asyncpg.connect(dsn)
    try:
        nft_rows = await conn.fetch(
            "SELECT token_id::text AS token_id, owner FROM nfts"
            " WHERE chain_id = $1 AND contract = $2",
            ANVIL_CHAIN_ID,
            contract_raw,
        )
        transfer_rows = await conn.fetch(
            "SELECT block_number, log_index, token_id::text AS token_id, to_address"
            " FROM transfers WHERE chain_id = $1 ORDER BY block_number DESC, log_index DESC",
            ANVIL_CHAIN_ID,
        )
    finally:
        await conn.close()
    checksums: dict[bytes, str] = {}

    def checksum(raw: Any) -> str:
        raw = bytes(raw)
        if raw not in checksums:
            checksums[raw] = checksum_address(raw)
        return checksums[raw]

    owner_of = {int(r["token_id"]): checksum(r["owner"]) for r in nft_rows}
    tokens_of: dict[str, list[int]] = {}
    for token, owner in owner_of.items():
        tokens_of.setdefault(owner, []).append(token)
    for tokens in tokens_of.values():
        tokens.sort()
    # Newest first, as /transfers and the history route order them.
    transfers = [
        (int(r["block_number"]), int(r["log_index"]), int(r["token_id"]), checksum(r["to_address"]))
        for r in transfer_rows
    ]
    history: dict[int, list[tuple[int, int, int, str]]] = {}
    for row in transfers:
        history.setdefault(row[2], []).append(row)
    rng = random.Random(SEED)
    contract = info.contract
    tokens = sorted(owner_of)
    owners = sorted(tokens_of)

    # GET /nfts/{c}/{id}
    def nft_key(token: int) -> Key:
        owner = owner_of[token]
        return Key(f"/nfts/{contract}/{token}", _nft_expect(token, owner), (token, owner))

    def verify_nft(key: Key, body: Any) -> str | None:
        token, owner = key.ref
        last = body.get("last_transfer") or {}
        got = (body.get("contract"), body.get("token_id"), body.get("owner"), last.get("to"))
        if got != (contract, str(token), owner, owner):
            return f"{key.path}: got {got}, want owner {owner} (nfts row)"
        return None

    # GET /owners/{a}/nfts (pages through the cursor of the previous page's last token)
    def owner_key(owner: str, start: int) -> Key:
        owned = tokens_of[owner]
        path = f"/owners/{owner}/nfts"
        if start:
            path += f"?cursor={encode_cursor([contract_raw.hex(), str(owned[start - 1])])}"
        return Key(path, _nft_expect(owned[start], owner), (owner, start))

    def verify_owner(key: Key, body: Any) -> str | None:
        owner, start = key.ref
        owned = tokens_of[owner]
        want = [str(t) for t in owned[start : start + PAGE]]
        items = body.get("items", [])
        got = [item.get("token_id") for item in items]
        if got != want or any(item.get("owner") != owner for item in items):
            return f"{key.path}: tokens {got[:3]}..., want {want[:3]}... all owned by {owner}"
        if (body.get("next_cursor") is not None) != (len(owned) > start + PAGE):
            return f"{key.path}: next_cursor {body.get('next_cursor')!r} is wrong"
        return None

    # GET /transfers?limit=50 (pages through the cursor of the previous page's last transfer)
    def transfer_key(start: int) -> Key:
        path = f"/transfers?limit={PAGE}"
        if start:
            before = transfers[start - 1]
            path += f"&cursor={encode_cursor([before[0], before[1]])}"
        block, log_index = transfers[start][:2]
        return Key(path, _transfer_expect(block, log_index), start)

    def _page(items: list[Any]) -> list[tuple[Any, ...]]:
        return [
            (item.get("block_number"), item.get("log_index"), item.get("token_id"), item.get("to"))
            for item in items
        ]

    def verify_transfers(key: Key, body: Any) -> str | None:
        want = [(b, li, str(t), to) for b, li, t, to in transfers[key.ref : key.ref + PAGE]]
        got = _page(body.get("items", []))
        if got != want:
            return f"{key.path}: items {got[:2]}..., want {want[:2]}..."
        return None

    # GET /nfts/{c}/{id}/transfers (the token's history, newest first, first page)
    def history_key(token: int) -> Key:
        block, log_index = history[token][0][:2]
        return Key(f"/nfts/{contract}/{token}/transfers", _transfer_expect(block, log_index), token)

    def verify_history(key: Key, body: Any) -> str | None:
        want = [(b, li, str(t), to) for b, li, t, to in history[key.ref][:PAGE]]
        got = _page(body.get("items", []))
        if got != want:
            return f"{key.path}: items {got[:2]}..., want {want[:2]}..."
        return None

    def shuffled(keys: list[Key]) -> list[Key]:
        rng.shuffle(keys)
        return keys

    # Cold owner pages: every full page of every owner (start 0 .. balance - 50).
    owner_pages = [(o, s) for o in owners for s in range(max(1, len(tokens_of[o]) - PAGE + 1))]
    transfer_starts = range(len(transfers) - PAGE + 1)
    routes = [
        Route(
            "nft",
            "GET /nfts/{c}/{id}",
            shuffled([nft_key(t) for t in tokens]),
            [nft_key(t) for t in rng.sample(tokens, WARM_KEYS)],
            verify_nft,
        ),
        Route(
            "owners",
            "GET /owners/{a}/nfts",
            shuffled([owner_key(o, s) for o, s in owner_pages]),
            [owner_key(o, 0) for o in rng.sample(owners, WARM_KEYS)],
            verify_owner,
        ),
        Route(
            "transfers",
            f"GET /transfers?limit={PAGE}",
            shuffled([transfer_key(s) for s in transfer_starts]),
            [transfer_key(0)]
            + [transfer_key(s) for s in rng.sample(transfer_starts, WARM_KEYS - 1)],
            verify_transfers,
        ),
        Route(
            "history",
            "GET /nfts/{c}/{id}/transfers",
            shuffled([history_key(t) for t in tokens]),
            [history_key(t) for t in rng.sample(tokens, WARM_KEYS)],
            verify_history,
        ),
    ]
    return routes, Dataset(len(transfers), len(owner_of), len(owners))


# ------------------------------------------------------------------------------- planner


def _plan_indexes(plan: Any, table: str) -> list[str]:
    """How `table` is read in an EXPLAIN (FORMAT JSON) plan: index names or 'Seq Scan'."""
    found: list[str] = []
    if plan.get("Relation Name") == table:
        found.append(plan.get("Index Name") or plan.get("Node Type", "?"))
    for child in plan.get("Plans", []):
        found += _plan_indexes(child, table)
    return found


async def nft_plan(conn: asyncpg.Connection, info: ChainInfo, tokens: list[int]) -> str:
    """Which index the query of GET /nfts/{c}/{id} reads `nfts` with, and its mean time."""
    contract = bytes.fromhex(info.contract[2:])
    sql, params = chain_reads.nft_query(ANVIL_CHAIN_ID, contract, str(tokens[0]), None)
    explained = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *params)
    plan = msgspec.json.decode(explained)[0]["Plan"]
    started = time.perf_counter()
    for token in tokens:
        await chain_reads.nft(conn, ANVIL_CHAIN_ID, contract, str(token), None)
    mean_ms = (time.perf_counter() - started) / len(tokens) * 1000
    return f"{', '.join(_plan_indexes(plan, 'nfts'))} ({mean_ms:.2f} ms a query)"


async def analyze(dsn: str, info: ChainInfo, *, run: bool) -> str:
    """VACUUM ANALYZE the fresh database (the steady state autovacuum reaches later, and no
    autovacuum in the middle of the load), and say what the NFT lookup's plan was before/after."""
    tokens = random.Random(SEED + 2).sample(range(1, info.minted_tokens + 1), 50)
    conn = await asyncpg.connect(dsn)
    try:
        before = await nft_plan(conn, info, tokens)
        if not run:
            return f"no ANALYZE (--no-analyze): nfts read by {before}"
        await conn.execute("VACUUM ANALYZE")
        after = await nft_plan(conn, info, tokens)
    finally:
        await conn.close()
    return f"VACUUM ANALYZE after indexing; nfts read by {before} before it, by {after} after"


# ------------------------------------------------------------------------------- servers


@dataclass
class Server:
    name: str
    url: str
    process: ChildProcess
    workers: list[int] = field(default_factory=list)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError, ValueError):
            found += [int(p) for p in task.read_text().split()]
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _uvicorn_workers(server: Server) -> list[int]:
    pids = [p for p in _children(server.process.pid) if "spawn_main" in _cmdline(p)]
    return pids or [server.process.pid]  # --workers 1: the app runs in the process itself


UVICORN_FIXED = [sys.executable, "-c", "from bench.api import uvicorn_main; uvicorn_main()"]
UVICORN_STOCK = [sys.executable, "-m", "uvicorn"]


async def start_server(
    name: str,
    target: str,
    env: dict[str, str],
    workers: int,
    workdir: Path,
    ready_path: str,
    *,
    stock: bool = False,
) -> Server:
    """uvicorn with `workers` processes; returns once every worker finished its startup."""
    port = free_port()
    argv = [
        *(UVICORN_STOCK if stock else UVICORN_FIXED),
        *(target, "--factory"),
        *("--host", HOST, "--port", str(port), "--workers", str(workers)),
        *("--log-level", "info", "--no-access-log"),  # info: "startup complete" per worker
    ]
    log_path = workdir / f"{name}.log"
    process = ChildProcess(name, argv, log_path=log_path, env=env, cwd=REPO_ROOT)
    server = Server(name, f"http://{HOST}:{port}", process)
    try:
        deadline = time.monotonic() + 90
        async with aiohttp.ClientSession() as session:
            while True:
                if not process.running():
                    raise ServiceStartError(
                        f"{name} exited with {process.popen.returncode}; log {log_path}:\n"
                        f"{process.log_tail(40)}"
                    )
                started = log_path.read_text(errors="replace").count("Application startup complete")
                answered = False
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(server.url + ready_path) as response:
                        answered = response.status == 200
                if answered and started >= workers:
                    break
                if time.monotonic() > deadline:
                    raise ServiceStartError(
                        f"{name} not ready; log {log_path}:\n{process.log_tail()}"
                    )
                await asyncio.sleep(0.1)
        server.workers = _uvicorn_workers(server)
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: Server) -> None:
    """SIGTERM to the supervisor (it stops its workers), then SIGKILL any worker left."""
    workers = (set(server.workers) | set(_uvicorn_workers(server))) - {server.process.pid}
    server.process.stop(timeout=15)
    for pid in workers:
        if "spawn_main" in _cmdline(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def connection_split(server: Server) -> tuple[int, ...]:
    """Established connections on the server's port, per worker process (from /proc)."""
    port = int(server.url.rsplit(":", 1)[1])
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(inode)
    split = []
    for pid in server.workers:
        count = 0
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    count += target.startswith("socket:[") and target[8:-1] in inodes
        split.append(count)
    return tuple(split)


async def _split_after(server: Server, delay: float) -> tuple[int, ...]:
    await asyncio.sleep(delay)
    return connection_split(server)


# ----------------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Result:
    route: str
    mode: str
    keys: int  # distinct keys requested
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors, timeouts, non-200 answers
    wrong: int  # 200 answers without what the request's right answer holds
    hits: int  # answers with X-Cache: hit
    answered: int
    wrapped: bool
    first_wrong: str
    split: tuple[int, ...]  # connections held by each worker process

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def hit_share(self) -> float:
        return self.hits / self.answered if self.answered else 0.0


def write_keys(path: Path, keys: list[Key]) -> None:
    with path.open("w") as out:
        for key in keys:
            out.write(f"{key.path}\t{key.expect}\n")


async def run_wrk(
    wrk: str,
    server: Server,
    keys: list[Key],
    *,
    label: str,
    seconds: float,
    connections: int,
    workdir: Path,
) -> Result:
    route, _, mode = label.partition(":")
    keys_file = workdir / f"keys-{route}-{mode}.tsv"
    write_keys(keys_file, keys)
    script = workdir / "bench.lua"
    script.write_text(WRK_SCRIPT)
    argv = [
        *(wrk, "-t", str(connections), "-c", str(connections), "-d", f"{seconds:g}s"),
        *("--timeout", "10s", "-s", str(script), server.url, "--", str(keys_file)),
        str(connections),
    ]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    # Which worker holds which connection: wrk opens them all at the start and keeps them.
    sampler = asyncio.create_task(_split_after(server, min(1.0, seconds / 2)))
    try:
        out, err = await asyncio.wait_for(process.communicate(), seconds + 120)
        split = await sampler
    except BaseException:
        sampler.cancel()
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    text = out.decode(errors="replace")
    line = next((x for x in text.splitlines() if x.startswith("BENCH_JSON ")), None)
    if process.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({process.returncode}):\n{text}\n{err.decode()[-2000:]}")
    data = msgspec.json.decode(line.removeprefix("BENCH_JSON "))
    errors = data["connect"] + data["read"] + data["write"] + data["timeout"] + data["non200"]
    return Result(
        route=route,
        mode=mode,
        keys=min(data["sent"], len(keys)),
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=errors,
        wrong=data["wrong"],
        hits=data["hits"],
        answered=data["answered"],
        wrapped=bool(data["wrapped"]),
        first_wrong=data["first_wrong"],
        split=split,
    )


# ---------------------------------------------------------------------------------- cache


@dataclass(frozen=True)
class Cache:
    url: str
    namespace: str
    own: bool  # our embedded Valkey: FLUSHDB is ours to do

    @property
    def ceiling_prefix(self) -> str:
        return f"{self.namespace}:ceiling:"

    async def empty(self) -> None:
        client = Redis.from_url(self.url)
        try:
            if self.own:
                await client.flushdb()
                return
            batch: list[Any] = []
            async for name in client.scan_iter(match=f"{self.namespace}:*", count=1000):
                batch.append(name)
                if len(batch) >= 1000:
                    await client.unlink(*batch)
                    batch.clear()
            if batch:
                await client.unlink(*batch)
        finally:
            await client.aclose()

    async def store_ceiling(self, bodies: list[bytes]) -> None:
        client = Redis.from_url(self.url)
        try:
            await client.mset({f"{self.ceiling_prefix}{i}": b for i, b in enumerate(bodies)})
        finally:
            await client.aclose()


# ---------------------------------------------------------------------------- correctness


async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, str | None, bytes]:
    async with session.get(url) as response:
        return response.status, response.headers.get("X-Cache"), await response.read()


async def check_keys(
    session: aiohttp.ClientSession, base: str, route: Route, keys: list[Key]
) -> tuple[list[str], list[bytes]]:
    """GET each key once, in turn; every answer checked field by field."""
    problems: list[str] = []
    bodies: list[bytes] = []
    for key in keys:
        status, _, body = await fetch(session, base + key.path)
        bodies.append(body)
        if status != 200:
            problems.append(f"{route.name} {key.path}: status {status}: {body[:200]!r}")
            continue
        problem = route.verify(key, msgspec.json.decode(body))
        if problem is None and key.expect.encode() not in body:
            problem = f"{key.path}: answer lacks {key.expect!r} (the check under load)"
        if problem is not None:
            problems.append(f"{route.name} {problem}")
    return problems, bodies


async def check_sample(base: str, routes: list[Route], rpc_url: str, info: ChainInfo) -> list[str]:
    """A sample of answers per route against the database, and the NFT owners against
    `ownerOf` on the chain as well."""
    rng = random.Random(SEED + 1)
    problems: list[str] = []
    async with aiohttp.ClientSession() as session:
        for route in routes:
            sample = rng.sample(route.cold, min(SAMPLE, len(route.cold)))
            found, _ = await check_keys(session, base, route, sample)
            problems += found
            if route.name == "nft":
                async with RpcClient(rpc_url, timeout=60) as rpc:
                    chain = await read_owners(rpc, info.contract, [k.ref[0] for k in sample])
                for key in sample:
                    token, owner = key.ref
                    if checksum_address(chain[token]) != owner:
                        problems.append(
                            f"token {token}: nfts.owner {owner}, ownerOf {chain[token]!r}"
                        )
    return problems


# ---------------------------------------------------------------------------------- report


def _implementation() -> str:
    # What uvicorn's "auto" picks: uvloop and httptools when installed.
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"loop={loop}, http={http}"


def _loadavg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


@dataclass
class Context:
    facts: str
    redis: str
    dataset: Dataset
    index_seconds: float
    workers: int
    connections: int
    seconds: float
    load_before: str
    stock_uvicorn: bool
    planner: str
    repeat: int
    load_after: str = ""


def report(ctx: Context, routes: list[Route], results: list[Result]) -> None:
    titles = {r.name: r.title for r in routes} | {"ceiling": "ceiling: bare, 1 Redis GET"}
    print(
        f"\nmachine: {os.cpu_count()} cores, shared: server, Postgres, Redis and wrk all run here"
    )
    print(f"  load average (1/5/15 min) before: {ctx.load_before}, after: {ctx.load_after}")
    print("  other processes (tests of other workers?) may take CPU: figures are noisy")
    print(f"postgres: {ctx.facts}")
    print(f"planner: {ctx.planner}")
    print(f"redis: {ctx.redis}")
    d = ctx.dataset
    print(
        f"data: {d.transfers:,} transfers, {d.tokens:,} tokens, {d.holders:,} holders; "
        f"`discograph index --until head` took {ctx.index_seconds:.1f}s"
    )
    if ctx.stock_uvicorn or ctx.workers == 1:
        nodelay = "uvicorn as is" + (": no TCP_NODELAY, uvicorn #3149" if ctx.workers > 1 else "")
    else:
        nodelay = "listening socket marked IPPROTO_TCP so TCP_NODELAY is on (uvicorn #3149)"
    print(
        f"server: uvicorn --workers {ctx.workers} ({_implementation()}, access log off; "
        f"{nodelay}), the same for the API and the ceiling"
    )
    best = f", best of {ctx.repeat} runs" if ctx.repeat > 1 else ""
    print(
        f"load: wrk on this machine, {ctx.connections} connections (one per wrk thread), "
        f"{ctx.seconds:g}s per row{best}; every answer checked against the database"
    )
    print(
        f"\n{'route':<30}{'mode':<6}{'keys':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}{'wrong':>7}{'X-Cache hit':>13}{'conns/worker':>14}"
    )
    for r in results:
        keys = f"{r.keys:,}" + ("*" if r.wrapped and r.mode == "cold" else "")
        hits = "n/a" if r.route == "ceiling" else f"{r.hit_share:.1%}"
        print(
            f"{titles[r.route]:<30}{r.mode:<6}{keys:>8}{r.rate:>9,.0f}{r.p50_ms:>9.2f}"
            f"{r.p99_ms:>9.2f}{r.errors:>8}{r.wrong:>7}{hits:>13}"
            f"{'/'.join(map(str, r.split)):>14}"
        )
    if any(r.wrapped and r.mode == "cold" for r in results):
        print("* the run went through every key and started over: later requests may be hits")
    for r in results:
        if r.first_wrong:
            print(f"first error of {r.route} {r.mode}: {r.first_wrong}")
    by = {(r.route, r.mode): r for r in results}
    ceiling, warm_nft = by[("ceiling", "warm")], by[("nft", "warm")]
    ratio = warm_nft.rate / ceiling.rate if ceiling.rate else 0.0
    print(
        f"\nratio warm NFT / ceiling: {ratio:.2f}"
        f" ({warm_nft.rate:,.0f} / {ceiling.rate:,.0f} req/s)"
    )
    print(
        f"ceiling: {ceiling.rate:,.0f} req/s with {ctx.workers} workers (issue 5 saw about 10,000"
        f" with 2 here; server {_implementation()})"
    )
    at = "" if ctx.connections == 16 else f" (measured at {ctx.connections} connections, not 16)"
    warm = [by[(r.name, "warm")] for r in routes]
    uncached = [by[(name, "cold")] for name in ("owners", "history")]
    targets = [
        ("warm NFT ≥ 0.6 × ceiling", ratio >= 0.6, f"{ratio:.2f}"),
        (
            f"warm p99 ≤ 20 ms at 16 connections{at}",
            all(r.p99_ms <= 20 for r in warm),
            ", ".join(f"{r.route} {r.p99_ms:.1f}" for r in warm),
        ),
        (
            f"uncached owner and history p99 ≤ 50 ms{at}",
            all(r.p99_ms <= 50 for r in uncached),
            ", ".join(f"{r.route} {r.p99_ms:.1f}" for r in uncached),
        ),
    ]
    print("targets of issue 5 (informational):")
    for label, met, value in targets:
        print(f"  {label}: {'met' if met else 'not met'} ({value})")


# ---------------------------------------------------------------------------------- run


@dataclass
class Setup:
    anvil: Anvil
    server_dsn: str
    postgres_origin: str
    cache: Cache
    redis_origin: str
    workdir: Path


async def measure(setup: Setup, info: ChainInfo, args: argparse.Namespace, wrk: str) -> int:
    facts = f"{setup.postgres_origin}: {await server_facts(setup.server_dsn)}"
    load_before = _loadavg()
    async with fresh_database(setup.server_dsn, "api") as dsn:
        print(
            f"indexing {info.events:,} events with `discograph index --until head` ...", flush=True
        )
        index_seconds = await run_discograph(setup.anvil.rpc_url, dsn, info)
        if index_seconds is None:
            raise SystemExit("`discograph index` is not available")
        planner = await analyze(dsn, info, run=not args.no_analyze)
        routes, dataset = await load_keys(dsn, info)
        if dataset.transfers < MIN_TRANSFERS or dataset.tokens < MIN_TOKENS:
            print(
                f"warning: {dataset.transfers:,} transfers, {dataset.tokens:,} tokens: below the"
                f" issue's {MIN_TRANSFERS:,} / {MIN_TOKENS:,}"
            )
        env = os.environ | {
            "DATABASE_URL": dsn,
            "REDIS_URL": setup.cache.url,
            "BENCH_CACHE_NAMESPACE": setup.cache.namespace,
            "BENCH_CEILING_PREFIX": setup.cache.ceiling_prefix,
            "LOG_LEVEL": "WARNING",
            "METRICS_PORT": "0",
            # wrk is one client address far above any sane per-IP limit: measure without it.
            "RATE_LIMIT_READS": "off",
        }
        ctx = Context(
            facts=facts,
            redis=setup.redis_origin,
            dataset=dataset,
            index_seconds=index_seconds,
            workers=args.workers,
            connections=args.connections,
            seconds=args.seconds,
            load_before=load_before,
            stock_uvicorn=args.stock_uvicorn,
            planner=planner,
            repeat=args.repeat,
        )
        with contextlib.ExitStack() as servers:
            print(f"starting uvicorn --workers {args.workers}: API and ceiling ...", flush=True)
            w, workdir = args.workers, setup.workdir
            stock = args.stock_uvicorn
            api = await start_server(
                "api", "bench.api:app_factory", env, w, workdir, "/health/live", stock=stock
            )
            servers.callback(stop_server, api)
            ceiling = await start_server(
                "ceiling", "bench.ceiling:app_factory", env, w, workdir, "/ready", stock=stock
            )
            servers.callback(stop_server, ceiling)
            problems = await check_sample(api.url, routes, setup.anvil.rpc_url, info)
            setup.anvil.stop()  # the chain was needed for indexing and ownerOf only
            if problems:
                for problem in problems[:20]:
                    print(f"MISMATCH {problem}")
                print(f"{len(problems)} wrong answers in the sample: no figures")
                return 1
            checked = sum(min(SAMPLE, len(r.cold)) for r in routes)
            print(f"sample: {checked} answers right (nfts rows, ownerOf on the chain)", flush=True)
            results = await _load(wrk, api, ceiling, routes, setup, args)
        ctx.load_after = _loadavg()
    report(ctx, routes, results)
    bad = sum(r.errors + r.wrong for r in results)
    if bad:
        print(f"\n{bad} failed or wrong answers under load")
    return 1 if bad else 0


async def _warm(session: aiohttp.ClientSession, server: Server, route: Route) -> list[bytes]:
    problems, bodies = await check_keys(session, server.url, route, route.warm)
    if problems:
        raise SystemExit("wrong answers in the warming pass:\n" + "\n".join(problems[:10]))
    return bodies


def _best(runs: list[Result]) -> Result:
    """Of repeated runs, the fastest (interference from other processes only slows down)."""
    return max(runs, key=lambda r: r.rate)


async def _load(
    wrk: str, api: Server, ceiling: Server, routes: list[Route], setup: Setup, args: Any
) -> list[Result]:
    """Each route cold then warm, the best of `--repeat` runs each; the ceiling right after
    each warm NFT run."""
    cache = setup.cache
    common = {"seconds": args.seconds, "connections": args.connections, "workdir": setup.workdir}
    results: list[Result] = []
    # No keep-alive for the warming passes: the load's connections are wrk's only.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        nft = routes[0]
        bodies = await _warm(session, api, nft)
        await cache.store_ceiling(bodies)
        ceiling_keys = [Key(f"/ceiling/{i}", key.expect, None) for i, key in enumerate(nft.warm)]
        # Warm-up (not reported): connection pools, imports, both workers busy once.
        warmup = {**common, "seconds": min(WARMUP_SECONDS, args.seconds)}
        await run_wrk(wrk, api, nft.warm, label="warmup:api", **warmup)
        await run_wrk(wrk, ceiling, ceiling_keys, label="warmup:ceiling", **warmup)
        for route in routes:
            print(f"measuring {route.title} ...", flush=True)
            cold, warm, top = [], [], []
            for attempt in range(args.repeat):
                await cache.empty()
                # Each repeat starts elsewhere in the keys: none is asked twice in the run.
                shift = attempt * len(route.cold) // args.repeat
                keys = route.cold[shift:] + route.cold[:shift]
                cold.append(await run_wrk(wrk, api, keys, label=f"{route.name}:cold", **common))
            for _ in range(args.repeat):
                bodies = await _warm(session, api, route)
                label = f"{route.name}:warm"
                warm.append(await run_wrk(wrk, api, route.warm, label=label, **common))
                if route is nft:
                    await cache.store_ceiling(bodies)
                    label = "ceiling:warm"
                    top.append(await run_wrk(wrk, ceiling, ceiling_keys, label=label, **common))
            results += [_best(cold), _best(warm)] + ([_best(top)] if top else [])
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.api",
        description="Read API benchmark: hot routes, cache cold and warm, against the ceiling.",
    )
    parser.add_argument("--seconds", type=float, default=10, help="per route and mode (default 10)")
    parser.add_argument(
        "--connections", type=int, default=16, help="concurrent connections (default 16)"
    )
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers (default 2)")
    parser.add_argument(
        "--events", type=int, default=100_000, help="Transfer events of the chain (default 100,000)"
    )
    parser.add_argument("--per-block", type=int, default=100, help="events per block (default 100)")
    parser.add_argument(
        "--stock-uvicorn",
        action="store_true",
        help="run uvicorn as is: with --workers > 1, Nagle stays on (uvicorn #3149)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per route and mode, the fastest reported (default 1; more on a busy machine)",
    )
    parser.add_argument(
        "--no-analyze",
        action="store_true",
        help="measure right after indexing, before any ANALYZE (planner without statistics)",
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or min(args.connections, args.workers, args.repeat) < 1:
        parser.error("--seconds, --connections, --workers and --repeat must be positive")
    if args.events < 1 or args.per_block < 1:
        parser.error("--events and --per-block must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        print(f"bench.api needs wrk (the HTTP load generator); install it with:\n  {WRK_INSTALL}")
        return 2
    exit_cleanly_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="discograph-bench-api-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        info = ensure_chain(args.events, args.per_block, workdir, rebuild=False)
        state, _ = cache_paths(args.events, args.per_block)
        # Services start on this (main) thread: they die with it (see discograph.processes).
        anvil = start_anvil(workdir, extra_args=("--load-state", str(state)), timeout=120)
        stack.callback(anvil.stop)
        server_dsn = os.environ.get("BENCH_DATABASE_URL")
        postgres_origin = "Postgres from BENCH_DATABASE_URL"
        if not server_dsn:
            postgres = start_postgres(workdir / "postgres", durable=False)
            stack.callback(postgres.stop)
            server_dsn = postgres.dsn("postgres")
            postgres_origin = "embedded Postgres, durable=False"
        redis_url = os.environ.get("BENCH_REDIS_URL")
        namespace = f"discograph:bench:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        if redis_url:
            cache = Cache(redis_url, namespace, own=False)
            redis_origin = f"BENCH_REDIS_URL, namespace {namespace} (emptied by SCAN + UNLINK)"
        else:
            valkey = start_valkey(workdir / "valkey")
            stack.callback(valkey.stop)
            cache = Cache(valkey.url(), namespace, own=True)
            redis_origin = "embedded Valkey (emptied by FLUSHDB before each cold run)"
        setup = Setup(anvil, server_dsn, postgres_origin, cache, redis_origin, workdir)
        try:
            return asyncio.run(measure(setup, info, args, wrk))
        finally:
            if not cache.own:
                asyncio.run(cache.empty())  # leave nothing of ours in a shared Redis
    return 1  # unreachable: ExitStack does not swallow exceptions


if __name__ == "__main__":
    raise SystemExit(main())
