"""The feed of one API process: its hub, its publisher, its connections and their limits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from litestar import WebSocket, websocket

from api.auth import token_verifier
from api.feed.connection import Close, Connection
from api.feed.hub import FeedHub
from api.feed.messages import CLOSE_GOING_AWAY, CLOSE_TOO_MANY
from api.feed.publisher import Publisher
from discograph.errors import ConfigError
from discograph.settings import Settings

log = logging.getLogger("discograph.feed")


def feed_channel(database_url: str) -> str:
    """The Redis channel of a database's feed: every API process on it shares it."""
    name = urlsplit(database_url).path.lstrip("/") or "postgres"
    return f"discograph:feed:{name}"


class Feed:
    def __init__(self, settings: Settings, database_url: str, redis_url: str | None) -> None:
        self.settings = settings
        self._pool: asyncpg.Pool | None = None
        channel = feed_channel(database_url)
        self.hub = FeedHub(lambda: self.pool, redis_url, channel)
        self.publisher = Publisher(database_url, redis_url, channel, self.hub.on_batch)
        try:
            self.verify = token_verifier(settings)
        except ConfigError:
            self.verify = None  # no JWT configured: connections are anonymous
        self.per_ip: Counter[str] = Counter()
        self.connections: set[Connection] = set()
        self._publishing: asyncio.Task[None] | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "the feed is not started"
        return self._pool

    async def start(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        await self.hub.start()
        self._publishing = asyncio.create_task(self.publisher.run(), name="feed-publisher")

    async def stop(self) -> None:
        for connection in list(self.connections):
            connection.close_with(CLOSE_GOING_AWAY, "server restarting: reconnect with since")
        await asyncio.sleep(0)  # let the connections send their close frames
        if self._publishing is not None:
            self._publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publishing
        await self.hub.stop()

    @contextlib.contextmanager
    def admit(self, ip: str) -> Iterator[None]:
        """Hold one of the address's WS_MAX_PER_IP connection slots (per process)."""
        if self.per_ip[ip] >= self.settings.ws_max_per_ip:
            raise Close(
                CLOSE_TOO_MANY,
                f"at most {self.settings.ws_max_per_ip} feed connections per address",
            )
        self.per_ip[ip] += 1
        try:
            yield
        finally:
            self.per_ip[ip] -= 1
            if not self.per_ip[ip]:
                del self.per_ip[ip]


@websocket("/ws/events", name="feed")
async def events(socket: WebSocket[Any, Any, Any]) -> None:
    """The live feed (README "Websocket feed"): query `since` and filters `contract`,
    `token_id`, `address`, `album_id`, `types`."""
    feed: Feed = socket.app.state.feed
    await Connection(feed, socket).serve()
