"""The embedded stack: services start, keep their data, and never outlive their parent."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest
import redis.asyncio as redis

from chain.album import call_view
from chain.rpc import RpcClient
from db.engine import with_database
from discograph.demo import DEMO_CATALOG
from discograph.embedded import start_postgres, start_valkey
from tests.conftest import REPO_ROOT

SERVICE_VARS = ("DATABASE_URL", "REDIS_URL", "RPC_URL", "RPC_WS_URL", "MINTER_PRIVATE_KEY")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pids: list[int], timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if not _gone(pid)]
        if not alive:
            return []
        time.sleep(0.1)
    return [pid for pid in pids if not _gone(pid)]


def test_child_process_dies_when_its_parent_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from discograph.processes import ChildProcess
        log = Path({str(tmp_path)!r}) / "s.log"
        child = ChildProcess("sleeper", ["sleep", "600"], log_path=log)
        print(child.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
    )
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    assert not _gone(child_pid)
    parent.kill()
    parent.wait()
    assert _wait_gone([child_pid], timeout=5) == []


async def test_embedded_postgres_keeps_data_across_restarts(service_dir: Path) -> None:
    server = start_postgres(service_dir / "pg", durable=False)
    try:
        conn = await asyncpg.connect(server.dsn())
        await conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        await conn.close()
    finally:
        server.stop()
    assert _wait_gone([server.process.pid]) == []
    server = start_postgres(service_dir / "pg", durable=False)
    try:
        conn = await asyncpg.connect(server.dsn())
        assert await conn.fetchval("SELECT x FROM kept") == 42
        await conn.close()
    finally:
        server.stop()


async def test_embedded_valkey_answers_and_stops(tmp_path: Path) -> None:
    server = start_valkey(tmp_path / "valkey")
    try:
        client = redis.from_url(server.url())
        await client.set("k", "v")
        assert await client.get("k") == b"v"
        await client.aclose()
    finally:
        server.stop()
    assert _wait_gone([server.process.pid]) == []


class DevProcess:
    """`discograph dev` in a subprocess, with what it printed."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "discograph.cli", "dev", "--block-time", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=cwd,
        )
        self.lines: list[str] = []

    def wait_ready(self, timeout: float = 90.0) -> str:
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if line.startswith("Ready"):
                return "".join(self.lines)
        self.popen.kill()
        pytest.fail("discograph dev never became ready:\n" + "".join(self.lines))

    def service_pids(self) -> list[int]:
        return [child.pid for child in psutil.Process(self.popen.pid).children(recursive=True)]

    def value(self, label: str) -> str:
        text = "".join(self.lines)
        match = re.search(rf"^\s+{label}\s+(\S+)", text, re.MULTILINE)
        assert match, f"no {label} in:\n{text}"
        return match.group(1)


@pytest.fixture
def start_dev(dev_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[], DevProcess]]:
    """Start `discograph dev` processes; any still running at teardown is killed (a failed
    assertion must not leave a stack behind)."""
    started: list[DevProcess] = []

    def start() -> DevProcess:
        dev = DevProcess(dev_env, tmp_path)
        started.append(dev)
        return dev

    yield start
    for dev in started:
        if dev.popen.poll() is None:
            dev.popen.kill()
            dev.popen.wait()


@pytest.fixture
def dev_env(service_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    env["DATA_DIR"] = str(service_dir / "data")
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def test_dev_stack_runs_demo_and_stops_cleanly_on_ctrl_c(
    start_dev: Callable[[], DevProcess],
) -> None:
    dev = start_dev()
    output = dev.wait_ready()
    assert "(embedded)" in output
    contract = dev.value("AlbumNFT")
    rpc_url = dev.value("chain")
    dsn = dev.value("postgres")
    pids = dev.service_pids()
    names = {psutil.Process(pid).name() for pid in pids}
    assert {"anvil", "postgres", "valkey-server"} <= names

    async def check() -> None:
        async with RpcClient(rpc_url) as rpc:
            (next_id,) = await call_view(rpc, contract, "nextTokenId")
            assert next_id == 5  # four demo albums minted
            for token_id in range(1, 5):
                (owner,) = await call_view(rpc, contract, "ownerOf", token_id)
                assert f"#{token_id:<3} owner {owner}".lower() in output.lower()
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM albums") == 4
            tracks = sum(len(songs) for _, albums in DEMO_CATALOG for _, songs in albums)
            assert await conn.fetchval("SELECT count(*) FROM tracks") == tracks
            assert await conn.fetchval("SELECT count(*) FROM contracts WHERE kind='album'") == 1
            # The indexer ran: every demo album is minted and linked to its token.
            assert await conn.fetchval("SELECT count(*) FROM nfts WHERE album_id IS NOT NULL") == 4
            assert await conn.fetchval("SELECT count(*) FROM albums WHERE status = 'minted'") == 4
        finally:
            await conn.close()

    asyncio.run(check())
    # The read API serves the indexed demo.
    api = dev.value("API")
    with urllib.request.urlopen(f"{api}/albums", timeout=10) as response:  # noqa: S310
        albums = json.loads(response.read())["items"]
        assert response.headers["X-Indexed-Block"]
    assert len(albums) == 4
    assert all(a["status"] == "minted" and a["nft"] is not None for a in albums)
    dev.popen.send_signal(signal.SIGINT)
    assert dev.popen.wait(timeout=30) == 0
    assert _wait_gone(pids) == []

    # A second run reuses the data folder: same chain (anvil state), same contract, no new demo.
    again = start_dev()
    again.wait_ready()
    assert again.value("AlbumNFT") == contract
    again_pids = again.service_pids()
    again.popen.send_signal(signal.SIGTERM)  # stops as cleanly as Ctrl-C
    assert again.popen.wait(timeout=30) == 0
    assert _wait_gone(again_pids) == []


def test_killed_dev_stack_leaves_no_process_behind(start_dev: Callable[[], DevProcess]) -> None:
    dev = start_dev()
    dev.wait_ready()
    pids = dev.service_pids()
    assert len(pids) >= 3
    dev.popen.kill()
    dev.popen.wait()
    assert _wait_gone(pids) == []


def test_dev_stack_uses_configured_postgres_and_redis(
    dev_env: dict[str, str],
    start_dev: Callable[[], DevProcess],
    pg_admin_url: str,
    redis_url: str,
) -> None:
    name = f"dg_devstack_{os.getpid()}_{int(time.time() * 1000)}"
    dev_env["DATABASE_URL"] = with_database(pg_admin_url, name)
    dev_env["REDIS_URL"] = redis_url
    dev = start_dev()
    try:
        output = dev.wait_ready()
        assert "(embedded)" not in output
        names = {psutil.Process(pid).name() for pid in dev.service_pids()}
        assert "postgres" not in names
        assert "valkey-server" not in names
        assert "anvil" in names
    finally:
        dev.popen.send_signal(signal.SIGINT)
        dev.popen.wait(timeout=30)

        async def drop() -> None:
            admin = await asyncpg.connect(with_database(pg_admin_url, "postgres"))
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()

        asyncio.run(drop())
