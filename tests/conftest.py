"""Real services for the tests: anvil, Postgres and Redis (never mocks).

Postgres and Redis are the embedded ones (what a new user gets) unless `TEST_DATABASE_URL` /
`TEST_REDIS_URL` name servers to use. Every test gets a fresh database cloned from a migrated
template, so tests never see each other's rows; anvil is per test (it starts in ~50 ms).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from chain.album import deploy_album_nft
from chain.rpc import RpcClient
from chain.signer import Signer
from db.engine import create_pool, migrate, with_database
from discograph.embedded import start_postgres, start_valkey
from discograph.localchain import ANVIL_DEV_KEYS, Anvil, start_anvil

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_TAG = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DSN of a Postgres server we may create databases on."""
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    # Not under pytest's basetemp: pytest resets that folder to mode 0700 when another run
    # starts, which would lock out the unprivileged user Postgres runs as (as root).
    folder = Path(tempfile.mkdtemp(prefix="discograph-test-pg-"))
    server = start_postgres(folder / "data", durable=False)
    try:
        yield server.dsn("postgres")
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.asynccontextmanager
async def scratch_database(
    pg_admin_url: str, prefix: str, template: str | None = None
) -> AsyncIterator[str]:
    """A database created for the duration of the block (cloned from `template` if given)."""
    name = f"{prefix}_{RUN_TAG}_{uuid.uuid4().hex[:8]}"
    clone = f' TEMPLATE "{template}"' if template else ""
    admin = await asyncpg.connect(with_database(pg_admin_url, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"{clone}')
    finally:
        await admin.close()
    try:
        yield name
    finally:
        admin = await asyncpg.connect(with_database(pg_admin_url, "postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest_asyncio.fixture(scope="session")
async def template_database(pg_admin_url: str) -> AsyncIterator[str]:
    """A database migrated to head once per run; each test clones it."""
    async with scratch_database(pg_admin_url, "dg_template") as name:
        await migrate(with_database(pg_admin_url, name))
        yield name


@pytest_asyncio.fixture
async def empty_database_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A fresh database with no schema at all (migration tests)."""
    async with scratch_database(pg_admin_url, "dg_empty") as name:
        yield with_database(pg_admin_url, name)


@pytest_asyncio.fixture
async def database_url(pg_admin_url: str, template_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test only."""
    async with scratch_database(pg_admin_url, "dg_test", template_database) as name:
        yield with_database(pg_admin_url, name)


@pytest_asyncio.fixture
async def second_database_url(pg_admin_url: str, template_database: str) -> AsyncIterator[str]:
    """Another fresh, migrated database (e.g. for a fresh index to compare with)."""
    async with scratch_database(pg_admin_url, "dg_test2", template_database) as name:
        yield with_database(pg_admin_url, name)


@pytest_asyncio.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
def service_dir() -> Iterator[Path]:
    """A data folder for embedded services started by a test, outside pytest's basetemp."""
    folder = Path(tempfile.mkdtemp(prefix="discograph-test-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis URL: `TEST_REDIS_URL`, or an embedded Valkey for the run."""
    configured = os.environ.get("TEST_REDIS_URL")
    if configured:
        yield configured
        return
    server = start_valkey(tmp_path_factory.mktemp("valkey"))
    try:
        yield server.url()
    finally:
        server.stop()


@pytest.fixture
def anvil(tmp_path: Path) -> Iterator[Anvil]:
    """A fresh automining anvil for this test."""
    chain = start_anvil(tmp_path)
    try:
        yield chain
    finally:
        chain.stop()


@pytest_asyncio.fixture
async def rpc(anvil: Anvil) -> AsyncIterator[RpcClient]:
    async with RpcClient(anvil.rpc_url) as client:
        yield client


@pytest.fixture
def dev_signers() -> list[Signer]:
    """anvil's funded dev accounts; [0] deploys and mints."""
    return [Signer(key) for key in ANVIL_DEV_KEYS]


@pytest_asyncio.fixture
async def album_contract(rpc: RpcClient, dev_signers: list[Signer]) -> str:
    """A freshly deployed AlbumNFT; dev account 0 is admin and minter."""
    address, _ = await deploy_album_nft(rpc, dev_signers[0])
    return address


def head_revision() -> str:
    """The newest migration's revision id (what a migrated database records)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config(str(REPO_ROOT / "alembic.ini"))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


TEST_JWT_SECRET = "test-secret-for-discograph-jwt-0123456789"


def api_env(database_url: str, **extra: str) -> dict[str, str]:
    """Settings of a test API: its database, the test JWT secret, no rate limits (tests read
    and write in loops from one address; the rate-limit tests set their own)."""
    return {
        "DATABASE_URL": database_url,
        "METRICS_PORT": "0",
        "JWT_SECRET": TEST_JWT_SECRET,
        "RATE_LIMIT_READS": "off",
        "RATE_LIMIT_WRITES": "off",
        **extra,
    }


@pytest_asyncio.fixture
async def api_client(database_url: str) -> AsyncIterator[Any]:
    """The real API app (lifespan, pool, hooks) on this test's database, in process."""
    from litestar.testing import AsyncTestClient

    from api.app import create_app
    from discograph.settings import load_settings

    settings = load_settings(api_env(database_url), env_file=None)
    async with AsyncTestClient(app=create_app(settings, database_url)) as client:
        yield client


@pytest.fixture
def api_url(database_url: str, redis_url: str) -> Iterator[str]:
    """The real API served by uvicorn on a free loopback port (own thread and event loop),
    for tests where the server and the test must run concurrently."""
    from api.app import create_app
    from discograph.settings import load_settings

    settings = load_settings(api_env(database_url, REDIS_URL=redis_url), env_file=None)
    with serve_api(
        create_app(settings, database_url, cache_namespace=f"test:{uuid.uuid4().hex}")
    ) as url:
        yield url


@contextlib.contextmanager
def serve_api(app: Any, port: int | None = None) -> Iterator[str]:
    """Serve an app with uvicorn on a free loopback port (or `port`), in its own thread and
    loop."""
    import threading

    import uvicorn

    from discograph.processes import free_port

    port = port or free_port()
    # Idle keep-alive connections outlive the test clients' own expiry (httpx: 5 s): with
    # uvicorn's default 5 s, a request sent on a connection the server is closing at that very
    # moment fails with a ReadError.
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_keep_alive=30
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="api-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
