"""A fault-injecting JSON-RPC proxy for the tests: it misbehaves on purpose, on cue.

`FaultyRpcServer` is a fault injector, not a node: each test scripts the faults it wants (HTTP
429/500, a truncated body, a wrong id, a JSON-RPC error, an emptied or altered result, a slow
answer), and the server applies them to incoming requests. Whatever is not faulted passes
through unchanged to an upstream node (a real anvil) if it was given one, so a test can show that
a client recovers once the fault is over.

Faults come from three sources, consulted in this order for each HTTP request:

1. per-method queues (`inject_for("eth_getLogs", ...)`): one fault per JSON-RPC call of that
   method, also inside a batch, where it damages that element only;
2. the global queue (`inject(...)`): one fault per HTTP request, whatever it holds;
3. chaos mode (`chaos(rate, faults, seed)`): each matching JSON-RPC call gets a random fault with
   probability `rate`, reproducibly for a given seed, until `calm()`.

A fault is either *whole-response* (`respond`: HTTP status, truncated body, slow answer, cut
connection, ...), which replaces the whole HTTP answer even when it was meant for one element of
a batch, or *per-call* (`damage`: `rpc_error`, `empty_result`, `map_result`), which rewrites one
call's JSON-RPC answer after the request was forwarded upstream. `applied` records every fault
applied, as (method, fault name).

It runs inside the test's event loop (`async with FaultyRpcServer(...)`) or in a thread with its
own loop (`start_in_thread()` / `stop_thread()`, or `with`), for synchronous tests that drive a
subprocess through it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import json
import random
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from discograph.processes import free_port

HOST = "127.0.0.1"

Respond = Callable[["FaultyRpcServer", web.Request, bytes], Awaitable[web.StreamResponse]]
# (the JSON-RPC call, the answer it would get) -> the answer it gets
Damage = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, applied to exactly one request (or one call of a batch).

    `respond(server, request, body)` produces the whole HTTP answer; it may use `server.forward`
    to fetch the real upstream answer first and damage that. A per-call fault also has `damage`,
    which rewrites one call's JSON-RPC answer, so it can hit a single element of a batch;
    `forwards` says whether that call still reaches the upstream node first.
    """

    name: str
    respond: Respond = field(repr=False)
    damage: Damage | None = field(default=None, repr=False)
    forwards: bool = True

    @property
    def whole_response(self) -> bool:
        return self.damage is None


def _parse_calls(body: bytes) -> tuple[list[dict[str, Any]], bool]:
    """The JSON-RPC calls of a request body and whether it is a batch ([] if not JSON-RPC)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return [], False
    if isinstance(payload, list):
        return [call for call in payload if isinstance(call, dict)], True
    return ([payload] if isinstance(payload, dict) else []), False


def _request_ids(body: bytes) -> list[Any]:
    """The JSON-RPC ids of a request body (one for a single call, several for a batch)."""
    calls, _ = _parse_calls(body)
    return [call.get("id") for call in calls] or [None]


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(payload).encode(), content_type="application/json"
    )


def _no_upstream_reply(call: dict[str, Any]) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": call.get("id"),
        "error": {"code": -32000, "message": "no upstream and no fault scripted"},
    }


# --- whole-response faults -------------------------------------------------------------------


def http_status(
    status: int, body: str = "injected fault", retry_after: float | None = None
) -> Fault:
    """Answer with a non-200 HTTP status (429 rate limit, 500, 400, ...), maybe a Retry-After."""
    headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}

    async def respond(
        server: FaultyRpcServer, request: web.Request, body_in: bytes
    ) -> web.StreamResponse:
        return web.Response(status=status, text=body, headers=headers)

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


# --- per-call faults -------------------------------------------------------------------------


def _per_call(name: str, damage: Damage, *, forwards: bool = True) -> Fault:
    """A fault that rewrites one call's answer; applied to a whole request, to each of its calls."""

    async def respond(
        server: FaultyRpcServer, request: web.Request, body_in: bytes
    ) -> web.StreamResponse:
        calls, is_batch = _parse_calls(body_in)
        if not calls:
            return await server.pass_through(body_in)
        return await server.damaged(
            body_in, calls, is_batch, dict.fromkeys(range(len(calls)), fault)
        )

    fault = Fault(name, respond, damage, forwards)
    return fault


def rpc_error(code: int, message: str, data: Any = None) -> Fault:
    """A JSON-RPC error answer (e.g. -32005 "query returned more than 10000 results").

    The call is not forwarded: the node refused it, so a sent transaction is not sent.
    """

    def damage(call: dict[str, Any], reply: dict[str, Any]) -> dict[str, Any]:
        error: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            error["data"] = data
        return {"jsonrpc": "2.0", "id": call.get("id"), "error": error}

    return _per_call(f"rpc_error_{code}", damage, forwards=False)


def empty_result() -> Fault:
    """Forward, then answer `[]` (a node's empty eth_getLogs for a block hash it does not know)."""

    def damage(call: dict[str, Any], reply: dict[str, Any]) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": call.get("id"), "result": []}

    return _per_call("empty_result", damage)


def map_result(fn: Callable[[Any], Any], name: str = "map_result") -> Fault:
    """Forward, then replace the result with `fn(result)` (error answers pass unchanged).

    A lagging node: `map_result(lambda head: hex(int(head, 16) - 3))` on eth_blockNumber, or
    `map_result(lambda block: None)` on eth_getBlockByNumber; corrupted logs: a `fn` changing
    each log's `blockHash`.
    """

    def damage(call: dict[str, Any], reply: dict[str, Any]) -> dict[str, Any]:
        if "result" not in reply:
            return reply
        return {**reply, "result": fn(reply["result"])}

    return _per_call(name, damage)


# --- the server ------------------------------------------------------------------------------


@dataclass
class _Chaos:
    rate: float
    faults: tuple[Fault, ...]
    rng: random.Random
    methods: frozenset[str] | None


class FaultyRpcServer:
    """Fault injector: an aiohttp JSON-RPC proxy on 127.0.0.1 that fails as scripted.

    Use as `async with FaultyRpcServer(upstream=anvil.rpc_url) as server:`, then
    `server.inject(http_status(429), ...)`; `server.url` is what the client under test talks to
    (any path is accepted, so `server.url + "/v3/KEY"` works too). Unfaulted requests are
    forwarded to `upstream` (or answered with a JSON-RPC error when there is no upstream).
    `server.requests` records every request body received, faulted or not; `server.applied`
    every fault applied, as (method, fault name).
    """

    def __init__(self, upstream: str | None = None) -> None:
        self.upstream = upstream
        self.port = free_port(HOST)
        self.requests: list[bytes] = []
        self.peers: set[tuple[str, int]] = set()
        self.applied: list[tuple[str, str]] = []
        self._faults: collections.deque[Fault] = collections.deque()
        self._method_faults: dict[str, collections.deque[Fault]] = {}
        self._chaos: _Chaos | None = None
        # Faults may be scripted from another thread than the one serving (start_in_thread).
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    # --- scripting ---------------------------------------------------------------------------

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each applies to one future HTTP request (a whole batch), in order."""
        with self._lock:
            self._faults.extend(faults)

    def inject_for(self, method: str, *faults: Fault) -> None:
        """Queue faults for calls of `method` only, also inside batches; before `inject`'s."""
        with self._lock:
            self._method_faults.setdefault(method, collections.deque()).extend(faults)

    def chaos(
        self,
        rate: float,
        faults: Sequence[Fault],
        seed: int,
        methods: set[str] | None = None,
    ) -> None:
        """From now on each call (of `methods`, or any) gets a random fault with probability `rate`.

        The draws come from `random.Random(seed)`: the same requests in the same order get the
        same faults. Scripted faults still take precedence. Lasts until `calm()`.
        """
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"chaos rate must be within [0, 1], not {rate}")
        if not faults:
            raise ValueError("chaos needs at least one fault to draw from")
        with self._lock:
            self._chaos = _Chaos(
                rate,
                tuple(faults),
                random.Random(seed),
                None if methods is None else frozenset(methods),
            )

    def calm(self) -> None:
        """End chaos mode (queued faults stay queued)."""
        with self._lock:
            self._chaos = None

    @property
    def pending_faults(self) -> int:
        """Scripted faults not applied yet (global and per-method queues)."""
        with self._lock:
            return len(self._faults) + sum(len(queue) for queue in self._method_faults.values())

    def _plan(
        self, calls: list[dict[str, Any]], is_batch: bool
    ) -> tuple[Fault | None, dict[int, Fault]]:
        """The faults for one HTTP request: a whole-response one, or per-call ones by index."""
        with self._lock:
            per_call: dict[int, Fault] = {}
            queued: set[int] = set()
            for index, call in enumerate(calls):
                queue = self._method_faults.get(str(call.get("method")))
                if queue:
                    per_call[index] = queue.popleft()
                    queued.add(index)
            if not per_call and self._faults:
                fault = self._faults.popleft()
                if fault.whole_response or not calls:
                    label = "batch" if is_batch else str(calls[0].get("method")) if calls else "?"
                    self.applied.append((label, fault.name))
                    return fault, {}
                per_call = dict.fromkeys(range(len(calls)), fault)
            elif not per_call and self._chaos is not None:
                chaos = self._chaos
                for index, call in enumerate(calls):
                    if chaos.methods is not None and call.get("method") not in chaos.methods:
                        continue
                    if chaos.rng.random() < chaos.rate:
                        per_call[index] = chaos.rng.choice(chaos.faults)
            whole = next((i for i in sorted(per_call) if per_call[i].whole_response), None)
            if whole is not None:
                # The whole answer is replaced: the other calls' scripted faults go back in
                # their queues (front, in order) for a later request.
                for index in sorted(queued - {whole}, reverse=True):
                    method = str(calls[index].get("method"))
                    self._method_faults[method].appendleft(per_call[index])
                self.applied.append((str(calls[whole].get("method")), per_call[whole].name))
                return per_call[whole], {}
            for index in sorted(per_call):
                self.applied.append((str(calls[index].get("method")), per_call[index].name))
            return None, per_call

    # --- serving -----------------------------------------------------------------------------

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
            calls, is_batch = _parse_calls(body)
            replies = [_no_upstream_reply(call) for call in calls] or [_no_upstream_reply({})]
            return _json(replies if is_batch else replies[0])
        status, answer = await self.forward(body)
        return web.Response(status=status, body=answer, content_type="application/json")

    async def damaged(
        self,
        body: bytes,
        calls: list[dict[str, Any]],
        is_batch: bool,
        per_call: dict[int, Fault],
    ) -> web.StreamResponse:
        """Forward the calls that still reach the node, then apply each call's `damage`."""
        to_forward = [
            index
            for index in range(len(calls))
            if index not in per_call or per_call[index].forwards
        ]
        replies: dict[Any, dict[str, Any]] = {}
        if to_forward and self.upstream is not None:
            upstream_body = (
                json.dumps([calls[index] for index in to_forward]).encode() if is_batch else body
            )
            status, raw = await self.forward(upstream_body)
            try:
                answer = json.loads(raw)
            except ValueError:
                answer = None
            if status != 200 or not isinstance(answer, list | dict):
                # Nothing to damage: the node's own failure is answer enough.
                return web.Response(status=status, body=raw, content_type="application/json")
            for reply in answer if isinstance(answer, list) else [answer]:
                if isinstance(reply, dict):
                    replies[reply.get("id")] = reply
        out: list[dict[str, Any]] = []
        for index, call in enumerate(calls):
            reply = replies.get(call.get("id")) or _no_upstream_reply(call)
            fault = per_call.get(index)
            if fault is not None and fault.damage is not None:
                reply = fault.damage(call, reply)
            out.append(reply)
        return _json(out if is_batch else out[0])

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(body)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer is not None:
            self.peers.add((str(peer[0]), int(peer[1])))
        calls, is_batch = _parse_calls(body)
        whole, per_call = self._plan(calls, is_batch)
        if whole is not None:
            return await whole.respond(self, request, body)
        if per_call:
            return await self.damaged(body, calls, is_batch, per_call)
        return await self.pass_through(body)

    async def start(self) -> None:
        app = web.Application()
        # Any path: node URLs often carry an API key in theirs.
        app.router.add_post("/{path:.*}", self._handle)
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

    # --- in a thread of its own --------------------------------------------------------------

    def start_in_thread(self, timeout: float = 10.0) -> FaultyRpcServer:
        """Serve from a daemon thread running its own event loop; returns once it listens.

        For synchronous tests (e.g. a `discograph index` subprocess pointed at `self.url`);
        scripting methods (`inject`, `chaos`, ...) are safe to call from the test's thread.
        """
        if self._thread is not None:
            raise RuntimeError("FaultyRpcServer is already running in a thread")
        loop = asyncio.new_event_loop()
        started: concurrent.futures.Future[None] = concurrent.futures.Future()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                started.set_exception(exc)
                loop.close()
                return
            started.set_result(None)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=serve, name=f"faulty-rpc-{self.port}", daemon=True)
        thread.start()
        try:
            started.result(timeout)
        except BaseException:
            if thread.is_alive():
                loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            raise
        self._loop, self._thread = loop, thread
        return self

    def stop_thread(self, timeout: float = 10.0) -> None:
        """Stop serving and end the thread started by `start_in_thread` (no-op if none)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            self._loop = self._thread = None

    def __enter__(self) -> FaultyRpcServer:
        return self.start_in_thread()

    def __exit__(self, *exc: object) -> None:
        self.stop_thread()
