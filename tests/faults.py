"""A fault-injecting JSON-RPC server for the tests: it misbehaves on purpose, on cue.

`FaultyRpcServer` is a fault injector, not a node: each test scripts the faults it wants (HTTP
429/500, a truncated body, a wrong id, an answer with neither result nor error, a slow answer),
and the server consumes one scripted fault per incoming request, in order. When the script is
empty it passes requests through unchanged to an upstream node (a real anvil) if it was given
one, so a test can show that a client recovers once the fault is over.

It is built to grow into a fault-injecting proxy: a `Fault` is just "given the request body and
the server, produce the HTTP answer", and it may call `server.forward(body)` to get the real
upstream answer and then damage it (stale heads, emptied logs, ...).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from discograph.processes import free_port

HOST = "127.0.0.1"

Respond = Callable[["FaultyRpcServer", web.Request, bytes], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, applied to exactly one request.

    `respond(server, request, body)` produces the HTTP answer; it may use `server.forward` to
    fetch the real upstream answer first and damage that.
    """

    name: str
    respond: Respond = field(repr=False)


def _request_ids(body: bytes) -> list[Any]:
    """The JSON-RPC ids of a request body (one for a single call, several for a batch)."""
    payload = json.loads(body)
    calls = payload if isinstance(payload, list) else [payload]
    return [call.get("id") for call in calls]


def _json(payload: object) -> web.Response:
    return web.Response(body=json.dumps(payload).encode(), content_type="application/json")


def http_status(status: int, body: str = "injected fault") -> Fault:
    """Answer with a non-200 HTTP status (429 rate limit, 500, 400, ...)."""

    async def respond(
        server: FaultyRpcServer, request: web.Request, body_in: bytes
    ) -> web.StreamResponse:
        return web.Response(status=status, text=body)

    return Fault(f"http_{status}", respond)


def truncated_body() -> Fault:
    """HTTP 200 with a JSON answer cut off halfway (Content-Length matches the cut body)."""

    async def respond(
        server: FaultyRpcServer, request: web.Request, body_in: bytes
    ) -> web.StreamResponse:
        full = json.dumps({"jsonrpc": "2.0", "id": _request_ids(body_in)[0], "result": "0x7a69"})
        return web.Response(body=full[: len(full) // 2].encode(), content_type="application/json")

    return Fault("truncated_body", respond)


def cut_connection() -> Fault:
    """Promise a full JSON body in Content-Length, send half of it, then drop the connection."""

    async def respond(
        server: FaultyRpcServer, request: web.Request, body_in: bytes
    ) -> web.StreamResponse:
        full = json.dumps(
            {"jsonrpc": "2.0", "id": _request_ids(body_in)[0], "result": "0x7a69"}
        ).encode()
        response = web.StreamResponse(
            headers={"Content-Type": "application/json", "Content-Length": str(len(full))}
        )
        await response.prepare(request)
        await response.write(full[: len(full) // 2])
        if request.transport is not None:
            request.transport.close()
        return response

    return Fault("cut_connection", respond)


def wrong_id() -> Fault:
    """A well-formed answer whose id is not the one that was asked for."""

    async def respond(
        server: FaultyRpcServer, request: web.Request, body_in: bytes
    ) -> web.StreamResponse:
        payload = json.loads(body_in)
        if isinstance(payload, list):
            return _json(
                [{"jsonrpc": "2.0", "id": call["id"] + 1000, "result": "0x0"} for call in payload]
            )
        return _json({"jsonrpc": "2.0", "id": payload["id"] + 1000, "result": "0x0"})

    return Fault("wrong_id", respond)


def no_result_no_error() -> Fault:
    """A JSON-RPC object with the right id but neither `result` nor `error`."""

    async def respond(
        server: FaultyRpcServer, request: web.Request, body_in: bytes
    ) -> web.StreamResponse:
        return _json({"jsonrpc": "2.0", "id": _request_ids(body_in)[0]})

    return Fault("no_result_no_error", respond)


def slow(seconds: float) -> Fault:
    """Wait `seconds` (or until the server stops), then answer as the upstream would."""

    async def respond(
        server: FaultyRpcServer, request: web.Request, body_in: bytes
    ) -> web.StreamResponse:
        await server.sleep(seconds)
        return await server.pass_through(body_in)

    return Fault(f"slow_{seconds}s", respond)


class FaultyRpcServer:
    """Fault injector: an aiohttp JSON-RPC endpoint on 127.0.0.1 that fails as scripted.

    Use as `async with FaultyRpcServer(upstream=anvil.rpc_url) as server:`, then
    `server.inject(http_status(429), ...)`; `server.url` is what the client under test talks to.
    Each request consumes the next scripted fault; with none left it is forwarded to `upstream`
    (or answered with a JSON-RPC error when there is no upstream). `server.requests` records
    every request body received, faulted or not.
    """

    def __init__(self, upstream: str | None = None) -> None:
        self.upstream = upstream
        self.port = free_port(HOST)
        self.url = f"http://{HOST}:{self.port}"
        self.requests: list[bytes] = []
        self.peers: set[tuple[str, int]] = set()
        self._faults: collections.deque[Fault] = collections.deque()
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._stopping = asyncio.Event()

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each applies to one future request, in order."""
        self._faults.extend(faults)

    @property
    def pending_faults(self) -> int:
        return len(self._faults)

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake early when the server is stopping (so shutdown never hangs)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def forward(self, body: bytes) -> tuple[int, bytes]:
        """Send `body` to the upstream node; its HTTP status and raw answer."""
        if self.upstream is None:
            raise RuntimeError("FaultyRpcServer has no upstream to forward to")
        if self._client is None:
            self._client = aiohttp.ClientSession(headers={"content-type": "application/json"})
        async with self._client.post(self.upstream, data=body) as response:
            return response.status, await response.read()

    async def pass_through(self, body: bytes) -> web.StreamResponse:
        """The upstream's answer unchanged, or a JSON-RPC error when there is no upstream."""
        if self.upstream is None:
            return _json(
                {
                    "jsonrpc": "2.0",
                    "id": _request_ids(body)[0],
                    "error": {"code": -32000, "message": "no upstream and no fault scripted"},
                }
            )
        status, answer = await self.forward(body)
        return web.Response(status=status, body=answer, content_type="application/json")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(body)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer is not None:
            self.peers.add((str(peer[0]), int(peer[1])))
        if self._faults:
            fault = self._faults.popleft()
            return await fault.respond(self, request, body)
        return await self.pass_through(body)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, self.port).start()

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def __aenter__(self) -> FaultyRpcServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
