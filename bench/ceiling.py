"""The ceiling of the read API for `bench.api`: a bare Litestar route, one Redis GET per request.

    REDIS_URL=redis://... BENCH_CEILING_PREFIX=ns:ceiling: \
        uvicorn bench.ceiling:app_factory --factory --workers 2

`GET /ceiling/{key}` answers the bytes stored under `BENCH_CEILING_PREFIX + key` as JSON (404
when absent): no middleware, no response cache, no database, so it is what the same server and
Redis can do at best for a cached read. `GET /ready` answers without touching Redis.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, MediaType, Response, get
from litestar.exceptions import NotFoundException
from redis.asyncio import Redis

from discograph.processes import die_with_parent


def create_ceiling_app(redis_url: str, prefix: str) -> Litestar:
    clients: list[Redis] = []

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        clients.append(Redis.from_url(redis_url))
        try:
            yield
        finally:
            await clients.pop().aclose()

    @get("/ceiling/{key:str}")
    async def ceiling(key: str) -> Response[bytes]:
        body = await clients[0].get(prefix + key)
        if body is None:
            raise NotFoundException(detail=f"no stored body {key!r}")
        return Response(
            body if isinstance(body, bytes) else body.encode(), media_type=MediaType.JSON
        )

    @get("/ready")
    async def ready() -> Response[bytes]:
        return Response(b'{"ready":true}', media_type=MediaType.JSON)

    return Litestar(route_handlers=[ceiling, ready], lifespan=[lifespan], openapi_config=None)


def app_factory() -> Litestar:
    """uvicorn `--factory` entry point: the ceiling app from the environment."""
    die_with_parent()
    return create_ceiling_app(os.environ["REDIS_URL"], os.environ["BENCH_CEILING_PREFIX"])
