"""The publisher: committed outbox rows, read once, handed to every API process.

With Redis, one API process per database publishes (a session advisory lock on its LISTEN
connection elects it; another process takes over when that connection ends): it wakes on the
writers' NOTIFY, which Postgres delivers at commit, so nothing is published before its
transaction commits; reads the new rows in seq order; encodes each message once; and
publishes `(after, items)` batches on the Redis channel every hub subscribes to. Without Redis
each process publishes to its own hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from api.feed import metrics
from api.feed.hub import outbox_items
from api.feed.messages import Item, encode_items
from db.engine import DB_ERRORS
from db.locks import FEED_PUBLISHER_LOCK_ID, OUTBOX_CHANNEL
from db.outbox import outbox_bounds

log = logging.getLogger("discograph.feed")

Deliver = Callable[[int, list[Item]], Awaitable[None]]


class Publisher:
    def __init__(
        self,
        dsn: str,
        redis_url: str | None,
        channel: str,
        local: Deliver,
        *,
        poll: float = 1.0,
        page: int = 1000,
        elect_every: float = 2.0,
    ) -> None:
        self.dsn = dsn
        self.redis_url = redis_url
        self.channel = channel
        self.local = local  # the process's own hub (used when there is no Redis)
        self.poll = poll
        self.page = page
        self.elect_every = elect_every
        self.leading = False
        self._redis: Redis | None = None
        self._redis_failing = False

    async def run(self) -> None:
        if self.redis_url is not None:
            self._redis = Redis.from_url(self.redis_url, socket_connect_timeout=2, socket_timeout=2)
        try:
            while True:
                try:
                    await self._lead()
                except DB_ERRORS as exc:
                    log.warning("feed publisher lost Postgres", extra={"error": repr(exc)})
                self._set_leading(False)
                await asyncio.sleep(self.poll)
        finally:
            self._set_leading(False)
            if self._redis is not None:
                with contextlib.suppress(Exception):
                    await self._redis.aclose()

    def _set_leading(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            metrics.PUBLISHER.set(1 if leading else 0)
            if leading:
                log.info("this process publishes the feed")

    async def _lead(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            if self._redis is not None:
                # Another process publishes while it holds the lock: ask again now and then.
                await self._elected(conn)
            committed = asyncio.Event()
            await conn.add_listener(OUTBOX_CHANNEL, lambda *_: committed.set())
            bounds = await outbox_bounds(conn)
            published = bounds[1] if bounds else 0
            self._set_leading(True)
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(committed.wait(), self.poll)
                committed.clear()
                async for items, began in outbox_items(conn, published, self.page):
                    await self._publish(published, items)
                    metrics.PUBLISH_LAG.observe(max(0.0, time.time() - began.timestamp()))
                    published = items[-1].seq
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)

    async def _elected(self, conn: asyncpg.Connection) -> None:
        """Return once this connection holds the publisher lock (asked every few seconds)."""
        lock = "SELECT pg_try_advisory_lock($1)"
        while True:
            if await conn.fetchval(lock, FEED_PUBLISHER_LOCK_ID):
                return
            await asyncio.sleep(self.elect_every)

    async def _publish(self, after: int, items: list[Item]) -> None:
        if self._redis is None:
            await self.local(after, items)
            return
        try:
            await self._redis.publish(self.channel, encode_items((after, items)))
        except (RedisError, OSError) as exc:
            # The hubs read these rows from Postgres (their catch-up) until Redis is back.
            if not self._redis_failing:
                log.warning("feed cannot publish to Redis", extra={"error": repr(exc)})
            self._redis_failing = True
        else:
            if self._redis_failing:
                log.info("feed publishes to Redis again")
            self._redis_failing = False
