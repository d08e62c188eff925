"""Run the minter: one per signing key (advisory lock; a second one waits as hot standby),
nonces reconciled at start, then queued requests sent on NOTIFY (polling as a fallback) and
every sent mint tracked each POLL_INTERVAL.

`python -m minter.service` runs it with settings from the environment (and `.env`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import sys

import asyncpg

from chain.errors import ChainError
from chain.failover import FailoverRpc
from chain.signer import Signer
from db.contracts import album_contracts
from db.engine import DB_ERRORS, DB_UNAVAILABLE
from db.locks import MINT_QUEUED_CHANNEL
from discograph.encoding import checksum_address, keccak_text, parse_address
from discograph.errors import ConfigError, DiscographError
from discograph.logs import configure_logging
from discograph.processes import exit_cleanly_on_sigterm
from discograph.settings import Settings, load_settings
from minter.node import Node
from minter.nonces import reconcile
from minter.worker import Minter, MinterConfig

log = logging.getLogger("discograph.minter")
STANDBY_RETRY = 0.5  # seconds between attempts to take the signer's lock
MAX_BACKOFF = 10.0


def lock_key(chain_id: int, address: bytes) -> int:
    """A stable signed 64-bit advisory-lock key for the minter of one key on one chain."""
    text = f"discograph-minter:{chain_id}:0x{address.hex()}"
    return int.from_bytes(keccak_text(text)[:8], "big", signed=True)


def signer_from(settings: Settings) -> Signer:
    key = settings.minter_key()
    if key is None:
        raise ConfigError("the minter needs MINTER_PRIVATE_KEY or MINTER_KEY_FILE")
    return Signer(key.reveal())


async def album_contract(conn: asyncpg.Connection, settings: Settings, chain_id: int) -> bytes:
    """ALBUM_CONTRACT, else the newest album contract recorded by `discograph deploy`."""
    if settings.album_contract:
        return parse_address(settings.album_contract)
    known = await album_contracts(conn, chain_id)
    if not known:
        raise ConfigError("no album contract: set ALBUM_CONTRACT or run `discograph deploy`")
    return known[0][0]


async def _take_lock(conn: asyncpg.Connection, key: int, address: str) -> None:
    """Wait (as hot standby) until this process is the only minter of the key."""
    waited = False
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
        if not waited:
            log.info(
                "another minter holds this key: waiting as hot standby", extra={"signer": address}
            )
            waited = True
        await asyncio.sleep(STANDBY_RETRY)
    if waited:
        log.info("took over as the key's minter", extra={"signer": address})


async def _session(
    database_url: str, node: Node, signer: Signer, settings: Settings, chain_id: int
) -> None:
    """Hold the key's lock on one connection and work through it until it breaks."""
    address = parse_address(signer.address)
    conn: asyncpg.Connection = await asyncpg.connect(database_url)
    try:
        await _take_lock(conn, lock_key(chain_id, address), signer.address)
        contract = await album_contract(conn, settings, chain_id)
        config = MinterConfig(
            chain_id=chain_id,
            contract=contract,
            confirmations=settings.confirmations,
            replace_after=settings.mint_replace_after,
            fee_cap=settings.mint_fee_cap,
        )
        minter = Minter(conn, node, signer, config)
        wake = asyncio.Event()
        await conn.add_listener(MINT_QUEUED_CHANNEL, lambda *_: wake.set())
        log.info(
            "minter started",
            extra={
                "signer": signer.address,
                "chain_id": chain_id,
                "contract": checksum_address(contract),
                "confirmations": config.confirmations,
            },
        )
        reconciled = False
        failures = 0
        while True:
            wake.clear()  # a NOTIFY during the pass wakes the next one at once
            try:
                if not reconciled:
                    await reconcile(conn, node, chain_id, address)
                    reconciled = True
                await minter.submit_queued()
                await minter.track()
                failures = 0
            except (ChainError, *DB_ERRORS) as exc:
                if conn.is_closed() or isinstance(exc, asyncpg.InternalClientError):
                    raise  # a new session: a new connection, the lock taken again
                failures += 1
                delay = random.uniform(0, min(MAX_BACKOFF, 0.2 * 2**failures))  # noqa: S311
                log.warning(
                    "minter pass failed, retrying",
                    extra={
                        "error": type(exc).__name__,
                        "detail": str(exc)[:200],
                        "retry_in": round(delay, 2),
                    },
                )
                await asyncio.sleep(delay)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), settings.poll_interval)
    finally:
        with contextlib.suppress(asyncpg.InterfaceError, OSError):
            await conn.close()  # and with it the lock


async def _serve(database_url: str, settings: Settings, signer: Signer) -> None:
    async with FailoverRpc(settings.rpc_url, timeout=settings.rpc_timeout) as rpc:
        node = Node(rpc, signer.address)
        chain_id = await node.chain_id()
        if settings.chain_id is not None and settings.chain_id != chain_id:
            raise ConfigError(
                f"CHAIN_ID is {settings.chain_id} but the node is on chain {chain_id}"
            )
        while True:
            try:
                await _session(database_url, node, signer, settings, chain_id)
            except DB_UNAVAILABLE as exc:
                # The lock went with the connection: take it again (or stand by) and reconcile.
                log.warning(
                    "lost the database connection, reconnecting",
                    extra={"error": type(exc).__name__, "detail": str(exc)[:200]},
                )
                await asyncio.sleep(1.0)


async def run_minter(
    settings: Settings,
    database_url: str,
    *,
    stop: asyncio.Event | None = None,
    metrics_port: int | None = None,
) -> int:
    """Run the minter until `stop` is set (or the task is cancelled); returns 0.

    Stopping cancels the work wherever it is: every step is safe to interrupt, because a
    signed transaction is committed before it is broadcast and sent again after a restart.
    """
    if not settings.rpc_url:
        raise ConfigError("RPC_URL is not set")
    signer = signer_from(settings)
    if metrics_port:
        from prometheus_client import start_http_server

        try:
            start_http_server(metrics_port, addr=settings.http_host)
        except OSError as exc:
            log.warning("metrics endpoint not started", extra={"port": metrics_port, "error": exc})
    stop = stop or asyncio.Event()
    work = asyncio.create_task(_serve(database_url, settings, signer))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            work.result()  # raises what stopped it
    finally:
        for task in (work, stopping):
            task.cancel()
        for task in (work, stopping):
            with contextlib.suppress(asyncio.CancelledError):
                await task
    log.info("minter stopped")
    return 0


async def _run_until_signalled(settings: Settings, database_url: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return await run_minter(
        settings, database_url, stop=stop, metrics_port=settings.metrics_port or None
    )


def main() -> int:
    try:
        settings = load_settings()
        if not settings.database_url:
            raise ConfigError("DATABASE_URL is not set")
    except ConfigError as exc:
        print(f"minter: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    exit_cleanly_on_sigterm()  # until the loop's own handler is installed
    try:
        return asyncio.run(_run_until_signalled(settings, settings.database_url))
    except ConfigError as exc:
        print(f"minter: configuration error: {exc}", file=sys.stderr)
        return 2
    except DiscographError as exc:
        print(f"minter: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
