"""Helpers for feed tests: a chain that emits many Transfers fast, and websocket clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

from chain.abi import encode_call, load_artifact
from chain.rpc import RpcClient
from chain.signer import Signer
from chain.transact import send_transaction

HOLDERS = [f"0x{i:040x}" for i in range(0x1000, 0x1010)]


@dataclass
class Emitter:
    rpc: RpcClient
    signer: Signer
    contract: str
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    minted: int = 0

    async def block(self, mints: int, moves: int = 0) -> dict[str, Any]:
        """One emitBlock transaction: `mints` new tokens, then `moves` transfers of old ones."""
        function = load_artifact("BenchTransfers").function("emitBlock")
        mint_to = [self.rng.choice(HOLDERS) for _ in range(mints)]
        move_ids = [self.rng.randint(1, max(self.minted, 1)) for _ in range(moves)]
        if moves and not self.minted:
            raise ValueError("nothing minted to move yet")
        move_to = [self.rng.choice(HOLDERS) for _ in range(moves)]
        data = encode_call(function, mint_to, move_ids, move_to)
        receipt = await send_transaction(self.rpc, self.signer, to=self.contract, data=data)
        assert int(receipt["status"], 16) == 1, receipt
        self.minted += mints
        return receipt


def ws_url(api_url: str, **query: Any) -> str:
    base = api_url.replace("http://", "ws://", 1) + "/ws/events"
    params = "&".join(f"{k}={v}" for k, v in query.items() if v is not None)
    return f"{base}?{params}" if params else base


@dataclass
class FeedClient:
    """A real websocket client that records every message and the close it got."""

    connection: ClientConnection
    messages: list[dict[str, Any]] = field(default_factory=list)
    live: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None
    close_reason: str = ""
    pong: bool = False  # answer each heartbeat, as the README asks clients to

    @property
    def events(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] not in ("live", "heartbeat")]

    @property
    def cursor(self) -> str | None:
        cursors = [m["cursor"] for m in self.messages if "cursor" in m]
        return cursors[-1] if cursors else None

    async def read(self) -> None:
        try:
            async for frame in self.connection:
                for line in str(frame).splitlines():
                    message = json.loads(line)
                    self.messages.append(message)
                    if message["type"] == "live":
                        self.live.set()
                    elif message["type"] == "heartbeat" and self.pong:
                        await self.connection.send('{"type":"pong"}')
        except websockets.ConnectionClosed:
            pass
        finally:
            if self.connection.protocol.close_rcvd is not None:
                self.close_code = self.connection.protocol.close_rcvd.code
                self.close_reason = self.connection.protocol.close_rcvd.reason

    async def wait_events(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"got {len(self.events)} of {count} events")
            await asyncio.sleep(0.02)
        return self.events


@contextlib.asynccontextmanager
async def feed_client(
    url: str, *, pong: bool = False, **connect_args: Any
) -> AsyncIterator[FeedClient]:
    """Connect, read in the background until the block ends or the server closes."""
    async with connect(url, **connect_args) as connection:
        client = FeedClient(connection, pong=pong)
        reader = asyncio.create_task(client.read())
        try:
            yield client
        finally:
            await connection.close()
            await reader


async def closed_with(url: str, timeout: float = 10.0, **connect_args: Any) -> tuple[int, str]:
    """Connect and wait for the server to close: (code, reason)."""
    async with connect(url, **connect_args) as connection:
        with contextlib.suppress(websockets.ConnectionClosed):
            async with asyncio.timeout(timeout):
                async for _ in connection:
                    pass
        assert connection.protocol.close_rcvd is not None, "closed without a close frame"
        return connection.protocol.close_rcvd.code, connection.protocol.close_rcvd.reason
