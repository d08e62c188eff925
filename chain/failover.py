"""JSON-RPC over several node URLs: retries with jittered backoff, fail-over, sticky routing.

Every chain read of the indexer goes through `FailoverRpc`. Failures of the transport (timeouts,
refused or broken connections, HTTP 429/5xx) and malformed answers are retried, each time on the
next URL; a URL that answers stays in use. A JSON-RPC error answer is the node's word, not a
fault of the transport, so it is raised at once: its caller decides (e.g. halve a getLogs range).

Log lines name a URL by its index in `urls`, never by the URL itself: it may carry an API key.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from chain.errors import RpcHttpError, RpcMalformedResponse, RpcTransportError
from chain.metrics import (
    RPC_ERRORS,
    RPC_FAILOVERS,
    RPC_LATENCY,
    RPC_REQUESTS,
    RPC_URL_ERRORS,
)
from chain.rpc import Params, RpcClient

log = logging.getLogger("discograph.rpc")

T = TypeVar("T")

BATCH_LABEL = "batch"
# 2**62 * any sane base delay is far above any max_delay; the cap keeps the float finite.
_MAX_EXPONENT = 62


def is_retryable(error: BaseException) -> bool:
    """Whether another attempt (possibly on another node) may succeed where this one failed."""
    if isinstance(error, RpcHttpError):
        return error.retryable
    return isinstance(error, RpcTransportError | RpcMalformedResponse)


def backoff_delay(
    attempt: int,
    error: BaseException,
    *,
    base_delay: float,
    max_delay: float,
    rng: random.Random,
) -> float:
    """Seconds to wait after failed attempt number `attempt` (0-based): full-jitter backoff.

    `uniform(0, min(max_delay, base_delay * 2**attempt))`, raised to the node's `Retry-After`
    when it sent one, but never above `max_delay`: a node asking for minutes must not stall the
    indexer when another URL could answer.
    """
    ceiling = min(max_delay, base_delay * 2 ** min(attempt, _MAX_EXPONENT))
    delay = rng.uniform(0.0, ceiling)
    if isinstance(error, RpcHttpError) and error.retry_after is not None:
        delay = max(delay, min(error.retry_after, max_delay))
    return delay


class FailoverRpc:
    """JSON-RPC client over one or more node URLs, with retries and fail-over.

    `call` and `batch` keep `RpcClient`'s contract (results or typed errors). Create it anywhere;
    the per-URL clients are created on first use, inside the event loop that uses them.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout: float = 10.0,
        max_attempts: int = 6,
        base_delay: float = 0.1,
        max_delay: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        if isinstance(urls, str):
            raise TypeError("urls must be a sequence of URLs, not one string")
        if not urls:
            raise ValueError("FailoverRpc needs at least one URL")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")
        if base_delay < 0 or max_delay < 0:
            raise ValueError("base_delay and max_delay cannot be negative")
        self._urls = tuple(urls)
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 (jitter, not crypto)
        self._clients: list[RpcClient | None] = [None] * len(self._urls)
        self._current = 0

    @property
    def urls(self) -> tuple[str, ...]:
        return self._urls

    @property
    def current(self) -> int:
        """Index in `urls` of the URL the next call goes to."""
        return self._current

    def _client(self, index: int) -> RpcClient:
        client = self._clients[index]
        if client is None:
            client = RpcClient(self._urls[index], timeout=self.timeout)
            self._clients[index] = client
        return client

    async def close(self) -> None:
        clients, self._clients = self._clients, [None] * len(self._urls)
        for client in clients:
            if client is not None:
                await client.close()

    async def __aenter__(self) -> FailoverRpc:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(self, method: str, params: Params = ()) -> Any:
        """One request; retried on another URL while the failure is retryable."""
        return await self._with_retries(method, lambda client: client.call(method, params))

    async def batch(self, calls: Sequence[tuple[str, Params]]) -> list[Any]:
        """Several requests in one round trip, results in call order; retried as a whole."""
        if not calls:
            return []
        return await self._with_retries(BATCH_LABEL, lambda client: client.batch(calls))

    async def call_on(self, index: int, method: str, params: Params = ()) -> Any:
        """One request to `urls[index]` only, no retry (cross-checking one node's answer)."""
        client = self._client(index)
        return await _measured(method, client.call(method, params), index)

    async def call_each(self, method: str, params: Params = ()) -> list[Any | BaseException]:
        """The same request to every URL at once, no retry; answers or errors in URL order.

        For the lagging-node guard: a suspicious answer (a head below the stored tip) is checked
        against what the other nodes say before anything is rolled back.
        """
        return await asyncio.gather(
            *(self.call_on(index, method, params) for index in range(len(self._urls))),
            return_exceptions=True,
        )

    async def _with_retries(self, label: str, send: Callable[[RpcClient], Awaitable[T]]) -> T:
        for attempt in range(self.max_attempts):
            index = self._current
            try:
                return await _measured(label, send(self._client(index)), index)
            except (RpcTransportError, RpcMalformedResponse) as error:
                if not is_retryable(error):
                    raise
                self._fail_over(index)
                if attempt + 1 >= self.max_attempts:
                    raise
                delay = backoff_delay(
                    attempt,
                    error,
                    base_delay=self.base_delay,
                    max_delay=self.max_delay,
                    rng=self._rng,
                )
                # Method, URL index and error class only: params may hold a signed transaction
                # and the URL or the error text an API key.
                log.warning(
                    "rpc %s failed on url #%d (%s%s), attempt %d/%d, retrying in %.3fs",
                    label,
                    index,
                    type(error).__name__,
                    f" {error.status}" if isinstance(error, RpcHttpError) else "",
                    attempt + 1,
                    self.max_attempts,
                    delay,
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _fail_over(self, failed: int) -> None:
        # Only the first of several concurrent calls failing on the same URL moves on: the
        # others then retry where it went instead of rotating again (and back, with two URLs).
        if self._current == failed:
            self._current = (failed + 1) % len(self._urls)
            if len(self._urls) > 1:
                RPC_FAILOVERS.labels(from_url=str(failed)).inc()


async def _measured(label: str, request: Awaitable[T], url: int) -> T:
    """Await one attempt, counting it, its latency and its error (if any) under `label`, and
    the error under the position `url` of the URL it went to."""
    RPC_REQUESTS.labels(method=label).inc()
    started = time.perf_counter()
    try:
        return await request
    except Exception as error:
        RPC_ERRORS.labels(method=label, kind=type(error).__name__).inc()
        RPC_URL_ERRORS.labels(url=str(url), kind=type(error).__name__).inc()
        raise
    finally:
        RPC_LATENCY.labels(method=label).observe(time.perf_counter() - started)
