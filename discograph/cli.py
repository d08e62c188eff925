"""The `discograph` command. Heavy imports live inside the commands: `index` starts fast."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from chain.errors import ChainError
from db.engine import create_pool, ensure_database, migrate
from discograph import __version__
from discograph.encoding import checksum_address, parse_address
from discograph.errors import ConfigError, DiscographError
from discograph.logs import configure_logging
from discograph.processes import exit_cleanly_on_sigterm
from discograph.settings import Settings, load_settings, redact_url

log = logging.getLogger("discograph")


@contextlib.contextmanager
def _database(settings: Settings) -> Iterator[str]:
    """The configured database, or the embedded dev one (started for the command's duration)."""
    if settings.database_url:
        yield settings.database_url
        return
    from discograph.devstack import DEV_DATABASE
    from discograph.embedded import start_postgres

    postgres = start_postgres(Path(settings.data_dir) / "postgres")
    try:
        yield postgres.dsn(DEV_DATABASE)
    finally:
        postgres.stop()


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    with _database(settings) as dsn:

        async def run() -> None:
            await ensure_database(dsn)
            await migrate(dsn, args.revision)

        asyncio.run(run())
        print(f"migrated {redact_url(dsn)} to {args.revision}")
    return 0


def cmd_deploy(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.rpc_url:
        raise ConfigError("RPC_URL is not set (`discograph dev` starts a local chain for you)")
    key = settings.minter_key()
    if key is None:
        raise ConfigError("MINTER_PRIVATE_KEY or MINTER_KEY_FILE is needed to deploy")
    from chain.rpc import RpcClient, to_int
    from chain.signer import Signer
    from discograph.deployment import deploy_and_record

    signer = Signer(key.reveal())

    async def run(dsn: str) -> str:
        async with RpcClient(settings.rpc_url[0]) as rpc:
            chain_id = to_int(await rpc.call("eth_chainId"))
            if settings.chain_id is not None and settings.chain_id != chain_id:
                raise ConfigError(f"CHAIN_ID is {settings.chain_id} but the node is on {chain_id}")
            await ensure_database(dsn)
            pool = await create_pool(dsn, max_size=2)
            try:
                return await deploy_and_record(
                    rpc,
                    pool,
                    signer,
                    chain_id,
                    name=args.name,
                    symbol=args.symbol,
                    minter=args.minter,
                    demo=args.demo,
                )
            finally:
                await pool.close()

    with _database(settings) as dsn:
        address = asyncio.run(run(dsn))
    print(f"AlbumNFT deployed at {address}; minter role granted to {args.minter or signer.address}")
    print(f"ALBUM_CONTRACT={address}")
    return 0


def _start_metrics(settings: Settings) -> None:
    if settings.metrics_port == 0:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(settings.metrics_port, addr=settings.http_host)
    except OSError as exc:
        log.warning(
            "metrics endpoint not started", extra={"port": settings.metrics_port, "error": exc}
        )


def cmd_index(settings: Settings, args: argparse.Namespace) -> int:
    from indexer.service import run_indexer

    _start_metrics(settings)
    reindex_from = getattr(args, "from_block", None)
    with _database(settings) as dsn:
        last = asyncio.run(run_indexer(settings, dsn, until=args.until, reindex_from=reindex_from))
    print(f"indexed up to block {last}")
    return 0


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app

    if settings.read_database_url and not settings.database_url:
        raise ConfigError("READ_DATABASE_URL is a replica of DATABASE_URL: set DATABASE_URL too")
    with _database(settings) as dsn:

        async def reachable() -> None:
            # A clear error now, not a traceback later.
            for url in (dsn, settings.read_database_url):
                if url:
                    pool = await create_pool(url, max_size=1)
                    await pool.close()

        asyncio.run(reachable())
        where = f"http://{settings.http_host}:{settings.http_port}"
        if settings.read_database_url:
            print(f"reads from the replica {redact_url(settings.read_database_url)}")
        if args.workers > 1:
            from discograph.apiserver import serve_workers

            print(f"API on {where} (OpenAPI at /schema), {args.workers} worker processes")
            serve_workers(settings, dsn, args.workers, args.env_file)
            return 0
        app = create_app(settings, dsn)
        print(f"API on {where} (OpenAPI at /schema)")
        uvicorn.run(
            app,
            host=settings.http_host,
            port=settings.http_port,
            ws_per_message_deflate=settings.ws_compression == "on",
            log_level=settings.log_level.lower(),
            access_log=False,
        )
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from discograph.status import print_status

    with _database(settings) as dsn:
        asyncio.run(print_status(settings, dsn))
    return 0


def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    """0: the projection matches the chain; 1: differences; 2: usage or configuration;
    3: the audit could not finish (node or database trouble)."""
    import asyncpg

    from discograph.audit import check_batching, run_audit, summary, to_json

    check_batching(args.batch_size, args.concurrency)
    with _database(settings) as dsn:
        try:
            report = asyncio.run(
                run_audit(
                    settings,
                    dsn,
                    calls_per_batch=args.batch_size,
                    in_flight=args.concurrency,
                    progress=None if args.quiet else sys.stderr,
                )
            )
        except (ChainError, asyncpg.PostgresError, OSError) as exc:
            print(f"discograph: audit not completed: {exc}", file=sys.stderr)
            return 3
    if args.json:
        sys.stdout.buffer.write(to_json(report) + b"\n")
        sys.stdout.flush()
    else:
        print("\n".join(summary(report, show=args.show)))
    return 1 if report.differences else 0


def cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    from api.auth import issue_token

    private_key = None
    if args.private_key_file is not None:
        try:
            private_key = Path(args.private_key_file).read_text()
        except OSError as exc:
            raise ConfigError(f"--private-key-file cannot be read: {exc.strerror}") from None
    print(
        issue_token(
            settings, subject=args.sub, role=args.role, ttl=args.ttl, private_key=private_key
        )
    )
    return 0


def cmd_minter(settings: Settings, args: argparse.Namespace) -> int:
    from minter.service import run_minter

    with _database(settings) as dsn:
        return asyncio.run(run_minter(settings, dsn, metrics_port=settings.metrics_port or None))


def cmd_watch(settings: Settings, args: argparse.Namespace) -> int:
    import os

    from discograph.watch import watch

    host = f"[{settings.http_host}]" if ":" in settings.http_host else settings.http_host
    filters = {
        "contract": args.contract,
        "token_id": args.token_id,
        "address": args.address,
        "album_id": args.album_id,
        "types": args.types,
    }
    try:
        return asyncio.run(
            watch(
                args.url or f"http://{host}:{settings.http_port}",
                since=args.since,
                filters=filters,
                token=args.token or os.environ.get("DISCOGRAPH_TOKEN") or None,
                json_lines=args.json,
                verbose=args.verbose,
                max_messages=args.max_messages,
            )
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _workers(value: str) -> int:
    try:
        workers = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number of processes") from None
    if not 1 <= workers <= 64:
        raise argparse.ArgumentTypeError("expected 1 to 64 worker processes")
    return workers


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError("expected seconds") from None
    if not 0 < seconds <= 10 * 365 * 86400:
        raise argparse.ArgumentTypeError("expected seconds between 0 and ten years")
    return seconds


def _until(value: str) -> int:
    from indexer.sync import HEAD

    if value == "head":
        return HEAD
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a block number or 'head'") from None
    if number < 0:
        raise argparse.ArgumentTypeError("a block number cannot be negative")
    return number


def _block(value: str) -> int:
    number = _until(value)
    if number < 0:
        raise argparse.ArgumentTypeError("expected a block number")
    return number


def cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    from discograph.devstack import run_dev

    block_time = args.block_time if args.block_time > 0 else None
    return run_dev(settings, block_time=block_time)


def _address(value: str) -> str:
    try:
        return checksum_address(parse_address(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="discograph",
        description="Reorg-safe read model, API and mint relayer for album NFTs.",
    )
    parser.add_argument("--version", action="version", version=f"discograph {__version__}")
    parser.add_argument("--env-file", default=".env", help="dotenv file to read (default .env)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = commands.add_parser(
        "dev", help="run the whole stack locally (embedded Postgres/Valkey, anvil, demo data)"
    )
    dev.add_argument(
        "--block-time",
        type=float,
        default=1.0,
        help="seconds between anvil blocks; 0 = mine on every transaction (default 1)",
    )
    dev.set_defaults(handler=cmd_dev)

    index = commands.add_parser(
        "index", help="index the configured contracts: backfill, then follow the chain tip"
    )
    index.add_argument(
        "--until",
        type=_until,
        default=None,
        metavar="BLOCK|head",
        help="exit once indexed up to BLOCK (or the head seen at start); default: run forever",
    )
    index.set_defaults(handler=cmd_index)

    reindex = commands.add_parser(
        "reindex",
        help="drop what was indexed from BLOCK on (e.g. after a reorg deeper than the window), "
        "then index again",
    )
    reindex.add_argument("--from", dest="from_block", type=_block, required=True, metavar="BLOCK")
    reindex.add_argument("--until", type=_until, default=None, metavar="BLOCK|head")
    reindex.set_defaults(handler=cmd_index)

    api = commands.add_parser("api", help="serve the API (HTTP_HOST:HTTP_PORT)")
    api.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="worker processes sharing the port (default 1; one per core to use them all)",
    )
    api.set_defaults(handler=cmd_api)

    minter = commands.add_parser(
        "minter", help="send queued mint requests and track them until final (holds the key)"
    )
    minter.set_defaults(handler=cmd_minter)

    token = commands.add_parser(
        "token", help="print a signed JWT for the write API (JWT_SECRET, or --private-key-file)"
    )
    token.add_argument("--sub", required=True, help="subject: the artist's id for role artist")
    token.add_argument("--role", required=True, choices=["artist", "admin"])
    token.add_argument(
        "--ttl", type=_positive_seconds, default=3600.0, help="seconds of validity (default 3600)"
    )
    token.add_argument(
        "--private-key-file",
        default=None,
        help="PEM private key for JWT_ALGORITHM=RS256/ES256 (HS256 signs with JWT_SECRET)",
    )
    token.set_defaults(handler=cmd_token)

    watch = commands.add_parser(
        "watch", help="print the websocket feed, one line a message; resumes after disconnects"
    )
    watch.add_argument(
        "--url", default=None, help="the API's base URL (default http://HTTP_HOST:HTTP_PORT)"
    )
    watch.add_argument("--since", default=None, metavar="CURSOR", help="resume after CURSOR")
    watch.add_argument("--contract", default=None, help="only this contract's events")
    watch.add_argument("--token-id", default=None, help="only this token's events")
    watch.add_argument("--address", default=None, help="only events from or to this address")
    watch.add_argument("--album-id", default=None, help="only this album's events")
    watch.add_argument(
        "--types", default=None, help="comma list of transfer,mint,metadata,removed,…"
    )
    watch.add_argument(
        "--token", default=None, help="JWT: also your own mint_status events (or DISCOGRAPH_TOKEN)"
    )
    watch.add_argument("--json", action="store_true", help="print each message's JSON")
    watch.add_argument("--verbose", action="store_true", help="also print heartbeats")
    watch.add_argument(
        "--max-messages", type=int, default=None, metavar="N", help="exit 0 after N events"
    )
    watch.set_defaults(handler=cmd_watch)

    status = commands.add_parser(
        "status", help="chain head, indexed block, lag, safe/finalized block and the last reorg"
    )
    status.set_defaults(handler=cmd_status)

    audit = commands.add_parser(
        "audit",
        help="compare the projection with ownerOf/tokenURI read from the node at the "
        "finalized block; exit 0 when they match, 1 on differences",
    )
    audit.add_argument("--json", action="store_true", help="print the report as JSON")
    audit.add_argument(
        "--batch-size", type=int, default=200, metavar="N", help="eth_calls per batch (200)"
    )
    audit.add_argument(
        "--concurrency", type=int, default=4, metavar="N", help="batches in flight (4)"
    )
    audit.add_argument(
        "--show", type=int, default=50, metavar="N", help="differences listed in the summary"
    )
    audit.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    audit.set_defaults(handler=cmd_audit)

    mig = commands.add_parser("migrate", help="apply database migrations (alembic upgrade)")
    mig.add_argument("revision", nargs="?", default="head", help="target revision (default head)")
    mig.set_defaults(handler=cmd_migrate)

    deploy = commands.add_parser(
        "deploy", help="deploy AlbumNFT, grant the minter role, record it in `contracts`"
    )
    deploy.add_argument("--name", default="Discograph Albums", help="ERC-721 name")
    deploy.add_argument("--symbol", default="ALBUM", help="ERC-721 symbol")
    deploy.add_argument(
        "--minter",
        type=_address,
        default=None,
        help="address to receive MINTER_ROLE (default: the key's own address)",
    )
    deploy.add_argument(
        "--demo",
        action="store_true",
        help="also create the demo catalog and mint/trade it (anvil dev chains only)",
    )
    deploy.set_defaults(handler=cmd_deploy)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(env_file=args.env_file)
    except ConfigError as exc:
        print(f"discograph: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    exit_cleanly_on_sigterm()
    try:
        return int(args.handler(settings, args))
    except ConfigError as exc:
        print(f"discograph: configuration error: {exc}", file=sys.stderr)
        return 2
    except (DiscographError, ChainError) as exc:
        print(f"discograph: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
