"""The Litestar application factory: `create_app(settings, database_url)`.

The API only reads chain-derived rows and writes catalog rows; it holds no key and never
talks to the chain (an import-linter contract keeps it so).

With a read replica (`READ_DATABASE_URL`), the read routes (`READ_ROUTERS`) query it through
`app.state.read_pool`, and the chain version every request carries is the replica's
checkpoint; writes, `GET /mints/{id}`, idempotency keys, the feed and the probes stay on the
primary (`app.state.pool`). Without one, `read_pool` is `pool`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from litestar import Litestar, MediaType, Request, Response, Router
from litestar.config.response_cache import ResponseCacheConfig
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.middleware import ASGIMiddleware
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.spec import Components
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from litestar.types import ASGIApp, Receive, Scope, Send

from api import idempotency
from api.auth import jwt_auth
from api.bodies import BoundedJsonRequest
from api.cache import CACHE_STORE, CACHE_TTL, cache_key, cache_store
from api.feed.service import Feed, events
from api.freshness import (
    CheckpointConnection,
    CheckpointReads,
    IndexedBlock,
    ReplicaIndexedBlock,
)
from api.middleware import ChainVersionMiddleware
from api.ratelimit import AnonymousReadRateLimit, Limiter, SubjectRateLimit, limit_storage
from api.routes import albums, health, nfts, page, status, writes
from api.state import add_read_headers
from db.engine import DB_ERRORS, create_pool
from discograph import __version__
from discograph.errors import ConfigError
from discograph.settings import Settings

log = logging.getLogger("discograph.api")

READ_ROUTERS: list[Any] = [status.StatusController]
READ_ROUTERS += [
    albums.AlbumController,
    albums.AlbumMetadataController,
    albums.ArtistAlbumsController,
]
READ_ROUTERS += [
    nfts.NftController,
    nfts.OwnerController,
    nfts.TransferController,
    nfts.HolderController,
]


def _error(
    status_code: int, detail: str, extra: Any = None, headers: dict[str, str] | None = None
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {"status_code": status_code, "detail": detail}
    if extra is not None:
        body["extra"] = extra
    return Response(body, status_code=status_code, media_type=MediaType.JSON, headers=headers)


def _database_down(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    return _error(
        HTTP_503_SERVICE_UNAVAILABLE,
        "database unavailable, retry shortly",
        headers={"Retry-After": "1"},
    )


def _retry(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """Postgres picked this request as a deadlock or serialization victim: nothing was written,
    and the same request will go through when sent again."""
    return _error(
        HTTP_503_SERVICE_UNAVAILABLE,
        "conflicting concurrent change, nothing written: retry",
        headers={"Retry-After": "1"},
    )


def _constraint(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """A database check refused a value the validation let through: still the client's input."""
    name = getattr(exc, "constraint_name", None)
    return _error(HTTP_400_BAD_REQUEST, "a value is out of range", {"constraint": name})


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    if isinstance(exc, HTTPException):
        return _error(exc.status_code, exc.detail, exc.extra or None, exc.headers)
    log.error(
        "unexpected error answering a request",
        exc_info=exc,
        extra={"method": request.method, "path": request.url.path},
    )
    return _error(HTTP_500_INTERNAL_SERVER_ERROR, "internal server error")


WRITE_ROUTERS: list[Any] = [
    writes.ArtistWriteController,
    writes.AlbumWriteController,
    writes.MintController,
]


class WritesDisabled(ASGIMiddleware):
    """Without a way to check tokens (no JWT_SECRET / public key) the write routes say so."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        raise HTTPException(status_code=HTTP_503_SERVICE_UNAVAILABLE, detail=self.reason)


def _write_controllers(
    settings: Settings, storage: Any, namespace: str
) -> tuple[list[Any], list[Components]]:
    """The write controllers behind JWT authentication, then the per-subject rate limit
    (controller middleware: they share paths with the read routes, e.g. `/albums`)."""
    try:
        auth = jwt_auth(settings)
    except ConfigError as exc:
        guard: list[Any] = [WritesDisabled(f"the write API is not configured: {exc}")]
        components: list[Components] = []
        security = None
    else:
        guard = [auth.middleware]
        writes_rate = settings.rate_limit("writes")
        if writes_rate:
            guard.append(SubjectRateLimit(Limiter(storage, writes_rate, f"{namespace}:writes")))
        components = [auth.openapi_components]
        security = [auth.security_requirement]
    guarded = [
        type(c.__name__, (c,), {"middleware": guard, "security": security}) for c in WRITE_ROUTERS
    ]
    return guarded, components


async def _prune_idempotency_keys(pool: asyncpg.Pool, every: float = 3600.0) -> None:
    """Hourly, every replica: idempotency keys are kept a day (`idempotency.KEEP_FOR`)."""
    while True:
        try:
            forgotten = await idempotency.prune(pool)
            if forgotten:
                log.info("idempotency keys expired", extra={"count": forgotten})
        except DB_ERRORS as exc:
            log.warning("idempotency key expiry failed", extra={"error": repr(exc)})
        await asyncio.sleep(every)


def create_app(
    settings: Settings,
    database_url: str,
    *,
    read_database_url: str | None = None,
    cache_namespace: str = "discograph:responses",
) -> Litestar:
    """Build the app; the asyncpg pools open in the app's lifespan (inside its loop).

    `read_database_url` (default: `settings.read_database_url`) is a streaming replica of
    `database_url` for the read routes; None reads the primary.
    """
    replica_url = read_database_url or settings.read_database_url

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # Plain reads and short transactions only: no session state to reset on release.
        app.state.pool = await create_pool(
            database_url, min_size=1, max_size=10, session_state=False
        )
        app.state.settings = settings
        primary_conn = CheckpointConnection(database_url)
        app.state.primary_checkpoints = None  # used only when a replica does not answer
        if replica_url is None:
            app.state.read_pool = app.state.pool
            checkpoint_conn = primary_conn
            app.state.indexed = IndexedBlock(database_url)
        else:
            # The version, `?min_block` and X-Indexed-Block all follow the replica's own
            # checkpoint row, committed with the rows it describes: never ahead of its data.
            app.state.read_pool = await create_pool(
                replica_url, min_size=1, max_size=10, session_state=False
            )
            checkpoint_conn = CheckpointConnection(replica_url)
            app.state.primary_checkpoints = CheckpointReads(primary_conn.fetch)
            app.state.indexed = ReplicaIndexedBlock(database_url, replica_url)
        app.state.checkpoints = CheckpointReads(checkpoint_conn.fetch)
        await app.state.indexed.start()
        background = [
            asyncio.create_task(_prune_idempotency_keys(app.state.pool)),
            asyncio.create_task(status.refresh_audit_gauges(app.state.read_pool)),
        ]
        await feed.start(app.state.pool)
        try:
            yield
        finally:
            await feed.stop()
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await app.state.indexed.stop()
            await checkpoint_conn.close()
            await primary_conn.close()
            if app.state.read_pool is not app.state.pool:
                await app.state.read_pool.close()
            await app.state.pool.close()

    feed = Feed(settings, database_url, settings.redis_url)
    prometheus = PrometheusConfig(app_name="discograph", prefix="discograph", group_path=True)
    storage = limit_storage(settings.redis_url)
    reads_rate = settings.rate_limit("reads")
    read_limit = []  # no middleware at all when off: nothing on the hot read path
    if reads_rate:
        limiter = Limiter(storage, reads_rate, f"{cache_namespace}:reads")
        read_limit.append(AnonymousReadRateLimit(limiter))
    write_controllers, openapi_components = _write_controllers(settings, storage, cache_namespace)
    api = Router(path="/", route_handlers=READ_ROUTERS + write_controllers, middleware=read_limit)
    return Litestar(
        route_handlers=[api, health.HealthController, PrometheusController, events, page.live_page],
        lifespan=[lifespan],
        state=State({"feed": feed}),
        before_send=[add_read_headers],
        middleware=[prometheus.middleware, ChainVersionMiddleware()],
        exception_handlers={
            asyncpg.DeadlockDetectedError: _retry,
            asyncpg.SerializationError: _retry,
            asyncpg.CheckViolationError: _constraint,
            asyncpg.PostgresConnectionError: _database_down,
            # 57xxx: shutting down, starting up ("cannot connect now"), statement timeout;
            # 53xxx: too many connections, disk full, out of memory. Retrying helps; a 500 would
            # claim a bug (both seen while Postgres restarted under load: bench/soak.py).
            asyncpg.OperatorInterventionError: _database_down,
            asyncpg.InsufficientResourcesError: _database_down,
            # A pooled connection that received Postgres's shutdown notice mid-use ("cannot
            # switch to state …; another operation is in progress"): the pool replaces it.
            asyncpg.InternalClientError: _database_down,
            asyncpg.InterfaceError: _database_down,
            OSError: _database_down,
            HTTPException: _unexpected,
            Exception: _unexpected,
        },
        openapi_config=OpenAPIConfig(
            title="Discograph",
            version=__version__,
            description="Reorg-safe read model of album NFTs: albums, NFTs, owners, transfers;"
            " JWT-authenticated writes that create albums and queue their mints.",
            path="/schema",
            components=openapi_components,
        ),
        stores={CACHE_STORE: cache_store(settings.redis_url, cache_namespace)},
        response_cache_config=ResponseCacheConfig(
            store=CACHE_STORE, key_builder=cache_key, default_expiration=CACHE_TTL
        ),
        request_max_body_size=1024 * 1024,
        # JSON bodies nested deeper than MAX_BODY_DEPTH are a 400 before anything decodes them.
        request_class=BoundedJsonRequest,
        # Logging belongs to the process (discograph.logs); Litestar must not reconfigure it.
        logging_config=None,
    )
