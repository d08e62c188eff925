"""`discograph dev`: the whole stack in one process, embedded services where no URL is set.

Services the stack starts itself (anvil, Postgres, Valkey) are children that stop with it:
on return, on an exception, on Ctrl-C / SIGTERM, and (through PDEATHSIG) even when this
process is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from eth_utils.address import to_checksum_address

from chain.rpc import RpcClient, to_int
from chain.signer import Signer
from db.contracts import album_contracts
from db.engine import create_pool, drop_database, ensure_database, migrate
from discograph.deployment import deploy_and_record
from discograph.embedded import start_postgres, start_valkey
from discograph.errors import ConfigError
from discograph.localchain import ANVIL_CHAIN_ID, ANVIL_DEV_KEYS, start_anvil
from discograph.processes import free_port, port_open
from discograph.settings import Secret, Settings, redact_url

log = logging.getLogger("discograph.dev")
DEV_DATABASE = "discograph"


@dataclass
class Services:
    """Where each part of the stack runs, and which of them this process started."""

    database_url: str
    redis_url: str
    rpc_url: str
    embedded_database: bool
    local_chain: bool


@contextlib.contextmanager
def services(settings: Settings, *, block_time: float | None) -> Iterator[Services]:
    """Start the services whose URL is not configured; stop them all on exit."""
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        database_url = settings.database_url
        if database_url is None:
            postgres = start_postgres(data_dir / "postgres")
            stack.callback(postgres.stop)
            database_url = postgres.dsn(DEV_DATABASE)
        redis_url = settings.redis_url
        if redis_url is None:
            valkey = start_valkey(data_dir / "valkey")
            stack.callback(valkey.stop)
            redis_url = valkey.url()
        rpc_url = settings.rpc_url[0] if settings.rpc_url else None
        if rpc_url is None:
            anvil = start_anvil(
                data_dir, block_time=block_time, state_file=data_dir / "anvil" / "state.json"
            )
            stack.callback(anvil.stop)
            rpc_url = anvil.rpc_url
        yield Services(
            database_url=database_url,
            redis_url=redis_url,
            rpc_url=rpc_url,
            embedded_database=settings.database_url is None,
            local_chain=not settings.rpc_url,
        )


def dev_settings(settings: Settings, found: Services) -> Settings:
    """What the dev stack fills in: the URLs it started, a JWT secret of its own (kept under
    DATA_DIR, so tokens survive restarts), and anvil's first dev key as the minter's."""
    changes: dict[str, object] = {
        "database_url": found.database_url,
        "redis_url": found.redis_url,
        "rpc_url": (found.rpc_url,),
    }
    if settings.jwt_secret is None and settings.jwt_algorithm == "HS256":
        changes["jwt_secret"] = dev_jwt_secret(Path(settings.data_dir))
    if settings.minter_key() is None and found.local_chain:
        changes["minter_private_key"] = Secret(ANVIL_DEV_KEYS[0])
    if found.local_chain:  # the indexer follows it by websocket heads, 1 confirmation
        changes["confirmations"] = 1
        changes["rpc_ws_url"] = found.rpc_url.replace("http://", "ws://", 1)
    return settings.with_values(**changes)


def dev_jwt_secret(data_dir: Path) -> Secret:
    path = data_dir / "jwt_secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32))
    return Secret(path.read_text().strip())


async def prepare(settings: Settings, found: Services) -> tuple[str, int, bool]:
    """Migrate, then reuse the album contract of an earlier run or deploy one.

    Returns the contract address, the chain id, and whether it was deployed just now (then the
    demo data is still to be made).
    """
    await ensure_database(found.database_url)
    await migrate(found.database_url)
    key = settings.minter_key()  # `dev_settings` gave a local chain anvil's first dev key
    if key is None:
        raise ConfigError("MINTER_PRIVATE_KEY or MINTER_KEY_FILE is needed with RPC_URL")
    minter = Signer(key.reveal())
    async with RpcClient(found.rpc_url) as rpc:
        chain_id = to_int(await rpc.call("eth_chainId"))
        pool = await create_pool(found.database_url, max_size=4)
        try:
            async with pool.acquire() as conn:
                known = await album_contracts(conn, chain_id)
            for address, _ in known:
                code = await rpc.call("eth_getCode", ["0x" + address.hex(), "latest"])
                if code not in ("0x", "0x0", None):
                    contract = str(to_checksum_address(address))
                    log.info("reusing album contract from an earlier run", extra={"at": contract})
                    return contract, chain_id, False
            if known and found.embedded_database and found.local_chain:
                # The dev chain was lost (its state file deleted) but the dev database kept
                # rows from it: start the dev database over, it only mirrors that chain.
                log.warning("dev chain was reset: recreating the embedded dev database")
                await pool.close()
                await drop_database(found.database_url)
                await ensure_database(found.database_url)
                await migrate(found.database_url)
                pool = await create_pool(found.database_url, max_size=4)
            contract = await deploy_and_record(rpc, pool, minter, chain_id)
            return contract, chain_id, True
        finally:
            await pool.close()


def describe(found: Services, contract: str, chain_id: int) -> str:
    lines = [
        "Discograph dev stack is up:",
        f"  chain      {redact_url(found.rpc_url)} (chain id {chain_id}"
        + (", local anvil)" if found.local_chain else ")"),
        f"  postgres   {redact_url(found.database_url)}"
        + (" (embedded)" if found.embedded_database else ""),
        f"  redis      {redact_url(found.redis_url)}",
        f"  AlbumNFT   {contract}",
    ]
    return "\n".join(lines)


async def _wait_indexed(dsn: str, block: int, indexer: asyncio.Task[int]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        while True:
            if indexer.done():
                indexer.result()  # raises what stopped it
                return
            indexed = await conn.fetchval("SELECT max(block_number) FROM checkpoints")
            if indexed is not None and indexed >= block:
                return
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def _print_indexed(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """
            SELECT n.token_id, n.owner, a.title, a.status, ar.name AS artist
            FROM nfts n LEFT JOIN albums a ON a.id = n.album_id
            LEFT JOIN artists ar ON ar.id = a.artist_id
            ORDER BY n.contract, n.token_id
            """
        )
        indexed = await conn.fetchval("SELECT max(block_number) FROM checkpoints")
    finally:
        await conn.close()
    print(f"  indexed up to block {indexed}: {len(rows)} album NFTs", flush=True)
    for row in rows:
        owner = to_checksum_address(bytes(row["owner"]))
        album = f"«{row['title']}» by {row['artist']} ({row['status']})" if row["title"] else ""
        print(f"    #{int(row['token_id']):<3} owner {owner}  {album}", flush=True)


async def _serve(settings: Settings, found: Services) -> None:
    """Run the stack until Ctrl-C / SIGTERM, which cancel it cleanly at any point."""
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    stopping = False

    def stop() -> None:
        nonlocal stopping
        stopping = True
        main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        await _run_stack(settings, found)
    except asyncio.CancelledError:
        if not stopping:
            raise
        print("Stopping…", flush=True)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _api_port(settings: Settings) -> int:
    """HTTP_PORT if it is free, else any free port (a second dev stack must not fail)."""
    if port_open(settings.http_host, settings.http_port):
        return free_port(settings.http_host)
    return settings.http_port


@contextlib.asynccontextmanager
async def _serve_api(settings: Settings, found: Services) -> AsyncIterator[str]:
    """The read API on uvicorn, in this process and event loop; yields its base URL."""
    import uvicorn

    from api.app import create_app

    class EmbeddedServer(uvicorn.Server):
        # The dev stack owns SIGINT/SIGTERM: uvicorn must not take them over.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    port = _api_port(settings)
    if settings.public_url is None:  # metadata URLs must name the port really taken
        settings = settings.with_values(public_url=f"http://{settings.http_host}:{port}")
    app = create_app(settings, found.database_url)
    server = EmbeddedServer(
        uvicorn.Config(
            app,
            host=settings.http_host,
            port=port,
            log_level="warning",
            ws_per_message_deflate=settings.ws_compression == "on",
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the API server stopped while starting")
        await asyncio.sleep(0.02)
    try:
        yield f"http://{settings.http_host}:{port}"
    finally:
        server.should_exit = True
        await task


async def _run_stack(settings: Settings, found: Services) -> None:
    from api.auth import issue_token
    from indexer.service import run_indexer
    from minter.service import run_minter

    settings = dev_settings(settings, found)
    contract, chain_id, fresh = await prepare(settings, found)
    settings = settings.with_values(album_contract=contract)
    print(describe(found, contract, chain_id), flush=True)
    async with RpcClient(found.rpc_url) as rpc:
        head = to_int(await rpc.call("eth_blockNumber"))
    tasks = [asyncio.create_task(run_indexer(settings, found.database_url))]
    try:
        await _wait_indexed(found.database_url, head, tasks[0])
        async with _serve_api(settings, found) as api_url:
            tasks.append(asyncio.create_task(run_minter(settings, found.database_url)))
            admin = issue_token(settings, subject="dev-admin", role="admin", ttl=30 * 86400)
            if fresh and chain_id == ANVIL_CHAIN_ID:
                print("  demo data: albums minted through the API and the minter …", flush=True)
                await _seed_demo(api_url, admin, found, contract, tasks)
            await _print_indexed(found.database_url)
            print(f"  API        {api_url}  (OpenAPI: {api_url}/schema, try {api_url}/albums)")
            print(f"  live page  {api_url}/  (feed: {api_url.replace('http', 'ws', 1)}/ws/events)")
            print(f"  admin JWT  {admin}")
            print("Ready: the indexer follows the chain, the minter sends mints. Ctrl-C stops.")
            sys.stdout.flush()
            # Both run until stopped: they return only by failing.
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _seed_demo(
    api_url: str, admin: str, found: Services, contract: str, tasks: list[asyncio.Task[int]]
) -> None:
    from discograph.demo import seed_demo_through_api

    async with RpcClient(found.rpc_url) as rpc:
        wallets = [Signer(key) for key in ANVIL_DEV_KEYS[1:]]
        seeding = asyncio.create_task(seed_demo_through_api(api_url, admin, rpc, contract, wallets))
        done, _ = await asyncio.wait([seeding, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if seeding not in done:
            seeding.cancel()
            for task in done:
                task.result()  # the indexer or minter failed: say why
        minted = seeding.result()
        head = to_int(await rpc.call("eth_blockNumber"))
    await _wait_indexed(found.database_url, head, tasks[0])
    print(f"  demo data: {minted} albums minted, 3 trades", flush=True)


def run_dev(settings: Settings, *, block_time: float | None = 1.0) -> int:
    """Entry point of `discograph dev`; returns the process exit code."""
    # Ctrl-C while services start must still stop what already runs: KeyboardInterrupt
    # unwinds through `services()`, whose exit stops every child.
    try:
        with services(settings, block_time=block_time) as found:
            asyncio.run(_serve(settings, found))
    except KeyboardInterrupt:
        print("Interrupted; stopped.", file=sys.stderr)
        return 130
    print("Stopped.", flush=True)
    return 0
