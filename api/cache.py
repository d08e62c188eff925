"""Response caching in Redis through Litestar's response cache, never stale after a commit.

Keys carry the version of the indexed chain (block number and hash) that this process knows
from the indexer's commit notifications: once a commit is known, every key moves on, so no
cached answer predates an event this process could already have announced. Redis being down
turns the cache into misses (answers come from Postgres), never into errors.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import msgspec
from litestar import Request
from litestar.stores.base import Store
from litestar.stores.memory import MemoryStore
from litestar.stores.redis import RedisStore
from prometheus_client import Counter
from redis.exceptions import RedisError

log = logging.getLogger("discograph.api")
CACHE_STORE = "response_cache"
CACHE_TTL = 300  # seconds; versioned keys never go stale, the TTL only frees memory

_encode = msgspec.json.Encoder().encode

CACHE_LOOKUPS = Counter(
    "discograph_cache_lookups",
    "Response-cache lookups of the API by result (hit, miss, error = backend unavailable)",
    ["result"],
)
_HIT, _MISS, _ERROR = (CACHE_LOOKUPS.labels(r) for r in ("hit", "miss", "error"))


def cache_key(request: Request[Any, Any, Any]) -> str:
    """Path, sorted query pairs (without `min_block`, which only delays) and the chain version,
    as one JSON array: decoded values may hold `&`, `=`, `?` or `@`, and only an encoding that
    quotes them keeps two different requests from sharing a key (JSON of strings is
    injective). Sorted, so the order of the parameters does not matter; duplicates are kept
    (`?a=1&a=1` is not `?a=1`)."""
    state = request.scope.get("state", {})
    query = sorted(kv for kv in request.query_params.multi_items() if kv[0] != "min_block")
    parts = (request.url.path, query, state.get("cache_version", "none"))
    try:
        return _encode(parts).decode()
    except UnicodeEncodeError:
        # A lone surrogate (no server decodes one into a path or query, but a key builder
        # must not fail): ASCII-escaped JSON, behind a prefix no msgspec key starts with.
        return "~" + json.dumps(parts)


class FailSoftStore(Store):
    """A store that treats a failing backend (Redis down) as a cache miss and says so."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.healthy = True

    def _failed(self, exc: Exception) -> None:
        if self.healthy:
            log.warning(
                "response cache unavailable, answering from Postgres", extra={"error": repr(exc)}
            )
        self.healthy = False

    async def set(
        self, key: str, value: str | bytes, expires_in: int | timedelta | None = None
    ) -> None:
        try:
            await self.inner.set(key, value, expires_in)
            self.healthy = True
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def get(self, key: str, renew_for: int | timedelta | None = None) -> bytes | None:
        try:
            value = await self.inner.get(key, renew_for)
        except (RedisError, OSError) as exc:
            _ERROR.inc()
            self._failed(exc)
            return None
        self.healthy = True
        (_MISS if value is None else _HIT).inc()
        return value

    async def delete(self, key: str) -> None:
        try:
            await self.inner.delete(key)
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def delete_all(self) -> None:
        try:
            await self.inner.delete_all()
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def exists(self, key: str) -> bool:
        try:
            return await self.inner.exists(key)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return False

    async def expires_in(self, key: str) -> int | None:
        try:
            return await self.inner.expires_in(key)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None

    async def __aexit__(self, *exc: object) -> None:
        await self.inner.__aexit__(*exc)  # type: ignore[arg-type]


def cache_store(redis_url: str | None, namespace: str = "discograph:responses") -> FailSoftStore:
    """Redis when configured (shared by every replica), else this process's memory."""
    if redis_url is None:
        return FailSoftStore(MemoryStore())
    return FailSoftStore(RedisStore.with_client(url=redis_url, namespace=namespace))
