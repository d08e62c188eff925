"""What the fault drills share: a log of what was done and checked, a read load that judges
every answer, an indexer run as under a supervisor, and services restartable in place."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import json
import logging
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

from db.engine import migrate, with_database
from discograph.embedded import EmbeddedPostgres, start_postgres
from discograph.localchain import Anvil, start_anvil
from discograph.settings import Settings
from indexer.errors import LeaseLost
from indexer.progress import Progress
from indexer.service import run_indexer
from minter.service import run_minter

log = logging.getLogger("discograph.chaos")


class DrillLog:
    """Prints `drill: …` (what was done, with the time since the start) and `check: …`
    lines; the drill's fixture prints a summary of the checks when it ends."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = time.monotonic()
        self.checks: list[str] = []

    @property
    def t(self) -> float:
        return time.monotonic() - self.started

    def did(self, what: str) -> None:
        print(f"drill: {what} at t={self.t:.1f}s", flush=True)

    def checked(self, what: str) -> None:
        self.checks.append(what)
        print(f"check: {what}", flush=True)

    def summary(self) -> str:
        return f"[fault drill] {self.name}: {self.t:.1f}s; " + "; ".join(self.checks)


# --- services restartable in place -----------------------------------------------------------


@dataclass
class OwnPostgres:
    """An embedded Postgres of the drill's own (not the shared test server), on a fixed port
    so it can be stopped and started again in place."""

    folder: Path
    server: EmbeddedPostgres

    @property
    def port(self) -> int:
        return self.server.port

    def url(self, database: str) -> str:
        return with_database(self.server.dsn("postgres"), database)

    def stop(self) -> None:
        self.server.stop()  # SIGINT: Postgres's fast shutdown, clients are disconnected

    def start(self) -> None:
        self.server = start_postgres(self.folder / "pg", durable=False, port=self.port)


@contextlib.asynccontextmanager
async def own_postgres(folder: Path, *databases: str) -> AsyncIterator[OwnPostgres]:
    """Start a Postgres in `folder` with `databases` created and migrated."""
    pg = OwnPostgres(folder, start_postgres(folder / "pg", durable=False))
    try:
        admin = await asyncpg.connect(pg.url("postgres"))
        try:
            for name in databases:
                await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        for name in databases:
            await migrate(pg.url(name))
        yield pg
    finally:
        pg.stop()


def start_anvil_at(folder: Path, port: int, state_file: Path) -> Anvil:
    """anvil on a fixed port with its chain kept in `state_file`: loaded at start, saved every
    second and on SIGTERM. Started again with the same file, it has the same blocks (hashes
    included)."""
    return start_anvil(folder, state_file=state_file, port=port, state_interval=1)


# --- the indexer, as under a supervisor --------------------------------------------------------


@dataclass
class Supervised:
    """The indexer, started again (after 0.5 s) whenever it stops with an error: what
    systemd / compose / Kubernetes do for `discograph index`. It is meant to ride out a
    Postgres restart by itself (back to standby, then the lease again): a drill asserts
    `restarts` is empty, and the supervisor only lets the drill finish its other checks."""

    restarts: list[str] = field(default_factory=list)


async def supervise_indexer(settings: Settings, database_url: str, record: Supervised) -> None:
    while True:
        try:
            await run_indexer(settings, database_url, progress=Progress(io.StringIO()))
            return
        except (LeaseLost, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            record.restarts.append(type(exc).__name__)
            log.warning("indexer stopped (%s), restarting it", type(exc).__name__)
            await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def supervised_indexer(
    settings: Settings, database_url: str
) -> AsyncIterator[tuple[asyncio.Task[None], Supervised]]:
    record = Supervised()
    task = asyncio.create_task(supervise_indexer(settings, database_url, record))
    try:
        yield task, record
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _where(exc: BaseException, package: str) -> str:
    """The innermost frame of `package` (e.g. "/minter/") an exception went through."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if package in f.filename]
    if not frames:
        return "?"
    frame = frames[-1]
    return f"{Path(frame.filename).parent.name}/{Path(frame.filename).name}:{frame.lineno}"


@dataclass
class SupervisedMinter:
    """The minter, started again whenever it stops with an error. It is meant to ride out
    a lost database connection by itself: every restart here is recorded as a finding."""

    crashes: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def supervised_minter(
    settings: Settings, database_url: str
) -> AsyncIterator[tuple[asyncio.Task[None], SupervisedMinter]]:
    record = SupervisedMinter()
    stop = asyncio.Event()

    async def supervise() -> None:
        while True:
            try:
                await run_minter(settings, database_url, stop=stop)
                return
            except Exception as exc:
                record.crashes.append(f"{type(exc).__name__} at {_where(exc, '/minter/')}: {exc}")
                log.warning("minter stopped (%r), restarting it", exc)
                await asyncio.sleep(0.5)

    task = asyncio.create_task(supervise())
    try:
        yield task, record
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 10)
        finally:
            task.cancel()


# --- a read load that judges every answer ------------------------------------------------------


@dataclass
class Answer:
    phase: str
    path: str
    status: int
    retry_after: str | None
    json_body: bool
    cached: bool
    seconds: float


@dataclass
class ReadLoad:
    """GETs against the API in a loop, each answer recorded with the drill's current phase.

    A violation is any 5xx but 503, a 503 without `Retry-After` or without a JSON error body,
    or no answer at all (transport error); the drill asserts there are none.
    """

    base: str
    paths: list[str]
    interval: float = 0.05
    headers: dict[str, str] = field(default_factory=dict)
    # Each request from another client address (X-Forwarded-For, which uvicorn trusts from
    # loopback): the per-IP read limit never refuses the load itself.
    spread_ips: bool = False
    phase: str = "before"
    answers: list[Answer] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def count(self, phase: str | None = None) -> collections.Counter[int]:
        return collections.Counter(
            a.status for a in self.answers if phase is None or a.phase == phase
        )

    def of(self, phase: str) -> list[Answer]:
        return [a for a in self.answers if a.phase == phase]

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(self.base, timeout=timeout) as http:
            turn = len(self.answers)
            while not stop.is_set():
                path = self.paths[turn % len(self.paths)]
                turn += 1
                await self.one(http, path)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval)

    def slowest(self, phase: str) -> float:
        return max((a.seconds for a in self.of(phase)), default=0.0)

    async def one(self, http: aiohttp.ClientSession, path: str) -> Answer | None:
        phase = self.phase
        headers = dict(self.headers)
        if self.spread_ips:
            n = len(self.answers) + len(self.violations)
            headers["X-Forwarded-For"] = f"10.77.{(n >> 8) & 255}.{n & 255}"
        began = time.monotonic()
        try:
            async with http.get(path, headers=headers) as response:
                body = await response.read()
                status = response.status
                retry_after = response.headers.get("Retry-After")
                cached = response.headers.get("X-Cache") == "hit"
                content_type = response.headers.get("Content-Type", "")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.violations.append(f"{phase} {path}: no answer ({exc!r})")
            return None
        json_body = content_type.startswith("application/json") and _is_json_object(body)
        answer = Answer(
            phase, path, status, retry_after, json_body, cached, time.monotonic() - began
        )
        self.answers.append(answer)
        if status >= 500 and status != 503:
            self.violations.append(f"{phase} {path}: {status} {body[:200]!r}")
        elif status == 503 and (retry_after is None or not json_body):
            self.violations.append(
                f"{phase} {path}: 503 without Retry-After or JSON body:"
                f" retry_after={retry_after} {body[:200]!r}"
            )
        elif status >= 400 and not json_body:
            self.violations.append(f"{phase} {path}: {status} without a JSON body {body[:200]!r}")
        return answer


def _is_json_object(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except ValueError:
        return False


@contextlib.asynccontextmanager
async def running(*loads: ReadLoad, workers: int = 1) -> AsyncIterator[None]:
    """Run read loads (each with `workers` concurrent clients) for the duration of the
    block."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(load.run(stop)) for load in loads for _ in range(workers)]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def rate(count: int, seconds: float) -> str:
    return f"{count / max(seconds, 1e-9):.0f}/s"


class UnexpectedErrors(logging.Handler):
    """Collects the API's `unexpected error answering a request` records (its 500s) with the
    exception class that caused each, so a drill can say what a 500 was."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.causes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("unexpected error") and record.exc_info:
            error = record.exc_info[1]
            if error is not None:
                where = _where(error, "/api/")
                self.causes.append(f"{type(error).__name__}: {error} (at {where})")


@contextlib.contextmanager
def api_500_causes() -> Iterator[UnexpectedErrors]:
    handler = UnexpectedErrors()
    logger = logging.getLogger("discograph.api")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
