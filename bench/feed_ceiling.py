"""The feed benchmark's ceiling: a bare Litestar websocket route that fans the outbox out.

The strongest simple reference for `WS /ws/events`: one process, no Redis, no filters, no
auth, no queues. It LISTENs to the writers' NOTIFY, reads the new outbox rows once, adds the
cursor to each payload, joins them into one JSON-lines frame and writes that frame to every
connected client in one loop. Served by `bench.feed` as
`uvicorn bench.feed_ceiling:app_factory --factory` with FEED_CEILING_DSN set.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from litestar import Litestar, WebSocket, websocket

from db.locks import OUTBOX_CHANNEL


class Fanout:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.clients: set[WebSocket[Any, Any, Any]] = set()
        self.position = 0
        self.task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()  # the position is known

    async def run(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        committed = asyncio.Event()
        await conn.add_listener(OUTBOX_CHANNEL, lambda *_: committed.set())
        self.position = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM outbox")
        self.ready.set()
        try:
            while True:
                await committed.wait()
                committed.clear()
                rows = await conn.fetch(
                    "SELECT seq, payload::text FROM outbox WHERE seq > $1 ORDER BY seq",
                    self.position,
                )
                if not rows:
                    continue
                self.position = rows[-1][0]
                frame = "\n".join(f'{{"cursor":"{seq}",{payload[1:]}' for seq, payload in rows)
                for client in list(self.clients):
                    try:
                        await client.send_data(frame)
                    except Exception:
                        self.clients.discard(client)
        finally:
            await conn.close()


def app_factory() -> Litestar:
    fanout = Fanout(os.environ["FEED_CEILING_DSN"])

    @websocket("/ws/events")
    async def events(socket: WebSocket[Any, Any, Any]) -> None:
        await socket.accept()
        await fanout.ready.wait()
        await socket.send_data(f'{{"type":"live","cursor":"{fanout.position}"}}')
        fanout.clients.add(socket)
        try:
            with contextlib.suppress(Exception):  # a disconnect ends the handler
                while True:
                    await socket.receive_data(mode="text")
        finally:
            fanout.clients.discard(socket)

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        fanout.task = asyncio.create_task(fanout.run())
        try:
            yield
        finally:
            fanout.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fanout.task

    return Litestar(route_handlers=[events], lifespan=[lifespan], logging_config=None)
