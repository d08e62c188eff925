"""Rate limits shared by every API replica: a moving window per subject (writes) or per
client IP (anonymous reads), counted atomically in Redis by the `limits` library.

Litestar's own RateLimitMiddleware reads and then writes the history under a per-process lock:
not atomic across replicas and one lock for all requests, so it is not used (DESIGN.md).
Answers carry `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`; a refusal is a 429
with `Retry-After`. With Redis away the limits are not enforced (logged once): the API keeps
answering, as it does for its cache.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import msgspec
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("discograph.api")
READS = ("GET", "HEAD")


class Limiter:
    """One limit (e.g. "60/minute") over shared storage; `check` counts a hit."""

    def __init__(self, storage: Storage, rate: str, namespace: str) -> None:
        self.item: RateLimitItem = parse(rate)
        self.window = MovingWindowRateLimiter(storage)
        self.namespace = namespace
        self.healthy = True

    def __deepcopy__(self, memo: dict[int, Any]) -> Limiter:
        return self  # Litestar copies route layers: they all share this one limiter

    async def check(self, identity: str) -> tuple[bool, dict[str, str]]:
        """Count a hit for `identity`: (allowed, the RateLimit-* headers)."""
        try:
            allowed = await self.window.hit(self.item, self.namespace, identity)
            reset_at, remaining = await self.window.get_window_stats(
                self.item, self.namespace, identity
            )
        except Exception as exc:
            if self.healthy:
                log.warning("rate limits unavailable, not enforced", extra={"error": repr(exc)})
            self.healthy = False
            return True, {}
        self.healthy = True
        reset = max(0, math.ceil(reset_at - time.time()))
        headers = {
            "RateLimit-Limit": str(self.item.amount),
            "RateLimit-Remaining": str(max(0, remaining)),
            "RateLimit-Reset": str(reset),
        }
        if not allowed:
            headers["Retry-After"] = str(max(1, reset))
        return allowed, headers


def limit_storage(redis_url: str | None) -> Storage:
    """Redis when configured (shared by every replica), else this process's memory."""
    if redis_url is None:
        return MemoryStorage()
    scheme, _, rest = redis_url.partition("://")
    return RedisStorage(f"async+{scheme}://{rest}", implementation="redispy")


def _client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def _with_headers(send: Send, headers: dict[str, str]) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            mutable = MutableScopeHeaders.from_message(message)
            for name, value in headers.items():
                mutable[name] = value
        await send(message)

    return wrapped


async def _refuse(send: Send, headers: dict[str, str], who: str) -> None:
    retry = headers.get("Retry-After", "1")
    detail = f"rate limit exceeded for this {who}, retry after {retry} s"
    body = msgspec.json.encode({"status_code": 429, "detail": detail})
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    raw += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    start: Any = {"type": "http.response.start", "status": 429, "headers": raw}
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _RateLimit(ASGIMiddleware):
    """Counts a hit for the request's identity (if it has one) and refuses it over the limit;
    installed only where a limit is configured."""

    scopes = (ScopeType.HTTP,)
    who = "client"

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter

    def identity(self, scope: Scope) -> str | None:
        """What the request counts against, or None when it is not counted here."""
        raise NotImplementedError

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        identity = self.identity(scope)
        if identity is None:
            await next_app(scope, receive, send)
            return
        allowed, headers = await self.limiter.check(identity)
        if not allowed:
            await _refuse(send, headers, self.who)
            return
        await next_app(scope, receive, _with_headers(send, headers))


class SubjectRateLimit(_RateLimit):
    """Per token subject, for writes; sits after authentication on the write controllers.
    Their GETs (a client polling `GET /mints/{id}`) count as reads, per client IP."""

    who = "subject"

    def identity(self, scope: Scope) -> str | None:
        if scope.get("method") in READS:
            return None
        user: Any = scope.get("user")
        return f"sub:{user.subject}" if user is not None else f"ip:{_client_ip(scope)}"


class AnonymousReadRateLimit(_RateLimit):
    """Per client IP, on every GET of the API routes (a token does not lift it: the read
    routes do not check tokens, so a header cannot buy a way around it)."""

    who = "client address"

    def identity(self, scope: Scope) -> str | None:
        return f"ip:{_client_ip(scope)}" if scope.get("method") in READS else None
