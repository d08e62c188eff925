"""One hub per API process: outbox rows, in seq order, into the queues of its connections.

Rows reach a hub as batches `(after, items)` from the publisher (through Redis, or directly
when no Redis is configured), where `after` is the seq the publisher had reached before the
batch. The hub only ever moves forward from its `position`:
- a batch whose `after` is beyond the position means the hub missed something (Redis lost a
  message, or the hub subscribed late): the gap is read from Postgres first;
- a catch-up read from Postgres runs every `poll` seconds and whenever Redis (re)connects, so
  rows published while Redis was away still arrive, a second late at most;
- rows at or below the position are skipped, so the two paths never duplicate.
Fan-out is synchronous: every connection's frame for a batch is queued before the next batch
is looked at, which is what keeps each connection's stream in seq order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from datetime import datetime

import asyncpg
import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from api.feed import metrics
from api.feed.messages import Filters, Item, decode_items, item_of
from db.engine import DB_ERRORS
from db.outbox import outbox_bounds, read_outbox

log = logging.getLogger("discograph.feed")


async def outbox_items(
    db: asyncpg.Connection | asyncpg.Pool, after: int, page: int, until: int | None = None
) -> AsyncIterator[tuple[list[Item], datetime]]:
    """Committed rows after `after` (up to `until`) as wire items, a page at a time, with the
    transaction time of each page's last row; ends at the first short page."""
    while True:
        rows = await read_outbox(db, after, page, until)
        if not rows:
            return
        yield [item_of(row[0], row[2]) for row in rows], rows[-1][3]
        if len(rows) < page:
            return
        after = rows[-1][0]


class Subscriber:
    """One connection's bounded queue of frames: (text or None, last seq, message count)."""

    __slots__ = (
        "filters",
        "floor",
        "frames",
        "limit",
        "on_overflow",
        "overflowed",
        "queued",
        "subject",
        "wake",
    )

    def __init__(
        self,
        filters: Filters,
        subject: str | None,
        limit: int,
        on_overflow: Callable[[], None],
    ) -> None:
        self.filters = filters
        self.subject = subject  # the JWT subject: its own mint_status events come through
        self.floor = 0  # rows at or below it are not for this connection
        self.limit = limit
        self.on_overflow = on_overflow
        self.overflowed = False
        self.frames: deque[tuple[str | None, int, int]] = deque()
        self.queued = 0
        self.wake = asyncio.Event()

    def accepts(self, item: Item) -> bool:
        """Whether the message is for this connection: its filters, and only its own
        `mint_status` events (anonymous connections get none)."""
        if item.type == "mint_status" and (self.subject is None or item.requester != self.subject):
            return False
        return self.filters.matches(item)

    def wants(self, item: Item) -> bool:
        """`accepts`, for a live row (rows at or below the floor come through the replay)."""
        return item.seq > self.floor and self.accepts(item)

    def offer(self, frame: str | None, last_seq: int, count: int) -> None:
        if self.overflowed:
            return
        if frame is None and self.frames:
            # Nothing for this connection: only its position moves (never grows the queue).
            text, _, queued = self.frames[-1]
            self.frames[-1] = (text, last_seq, queued)
            return
        if self.queued and self.queued + count > self.limit:  # one batch always fits
            self.overflowed = True
            self.on_overflow()
            return
        self.frames.append((frame, last_seq, count))
        self.queued += count
        self.wake.set()

    def take(self) -> list[tuple[str | None, int, int]]:
        frames = list(self.frames)
        self.frames.clear()
        self.queued = 0
        self.wake.clear()
        return frames


class FeedHub:
    """The process's view of the outbox and its subscribers."""

    def __init__(
        self,
        pool_of: Callable[[], asyncpg.Pool],
        redis_url: str | None,
        channel: str,
        *,
        poll: float = 1.0,
        page: int = 1000,
    ) -> None:
        self.pool_of = pool_of
        self.redis_url = redis_url
        self.channel = channel
        self.poll = poll
        self.page = page
        self.position: int | None = None  # unknown until Postgres answered once
        self.subscribers: set[Subscriber] = set()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        with contextlib.suppress(*DB_ERRORS):
            await self._init_position()
        self._tasks.append(asyncio.create_task(self._poll_loop(), name="feed-catch-up"))
        if self.redis_url is not None:
            self._tasks.append(asyncio.create_task(self._redis_loop(), name="feed-redis"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def wait_ready(self, timeout: float) -> bool:
        """Whether the hub knows its position (Postgres answered) within `timeout`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self._ready.is_set()

    def subscribe(self, subscriber: Subscriber) -> int:
        """Add a connection; everything after the returned position reaches its queue."""
        assert self.position is not None
        self.subscribers.add(subscriber)
        return self.position

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    def wake(self) -> None:
        """Look at Postgres now (a NOTIFY arrived without Redis, or Redis reconnected)."""
        self._wake.set()

    async def _init_position(self) -> None:
        if self.position is None:
            bounds = await outbox_bounds(self.pool_of())
            self.position = bounds[1] if bounds else 0
            self._ready.set()

    async def on_batch(self, after: int, items: list[Item]) -> None:
        """A published batch: fill what lies between our position and `after`, then fan out."""
        async with self._lock:
            if self.position is None:
                self.wake()
                return
            if after > self.position:
                try:
                    await self._read_until(after)
                except DB_ERRORS:
                    self.wake()  # the catch-up loop delivers all of it from Postgres later
                    return
            fresh = [item for item in items if item.seq > self.position]
            if fresh:
                self._fan_out(fresh)

    async def catch_up(self) -> None:
        """Deliver every committed row beyond our position, from Postgres."""
        async with self._lock:
            await self._init_position()
            await self._read_until(None)

    async def _read_until(self, until: int | None) -> None:
        assert self.position is not None
        async for items, _ in outbox_items(self.pool_of(), self.position, self.page, until):
            metrics.CATCH_UP_ROWS.inc(len(items))
            self._fan_out(items)

    def _fan_out(self, items: list[Item]) -> None:
        last = items[-1].seq
        first = items[0].seq
        public = [i for i in items if i.type != "mint_status"]
        public_frame = "\n".join(i.wire for i in public) if public else None
        for subscriber in self.subscribers:
            if (
                subscriber.filters.everything
                and subscriber.subject is None
                and subscriber.floor < first
            ):
                subscriber.offer(public_frame, last, len(public))
                continue
            chosen = [i.wire for i in items if subscriber.wants(i)]
            subscriber.offer("\n".join(chosen) if chosen else None, last, len(chosen))
        self.position = last

    async def _poll_loop(self) -> None:
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll)
            self._wake.clear()
            try:
                await self.catch_up()
                if failing:
                    log.info("feed reads Postgres again")
                failing = False
            except DB_ERRORS as exc:
                if not failing:
                    log.warning("feed cannot read the outbox, retrying", extra={"error": repr(exc)})
                failing = True

    async def _redis_loop(self) -> None:
        assert self.redis_url is not None
        delay = 0.2
        failing = False
        while True:
            client = Redis.from_url(self.redis_url, socket_connect_timeout=2)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.wake()  # what was published while we were not listening
                if failing:
                    log.info("feed subscribed to Redis again")
                failing, delay = False, 0.2
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None:
                        continue
                    try:
                        after, items = decode_items(message["data"])
                    except msgspec.DecodeError:
                        log.warning("feed ignored a malformed Redis message")
                        continue
                    if items:
                        await self.on_batch(after, items)
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning(
                        "feed lost Redis, reading Postgres until it is back",
                        extra={"error": repr(exc)},
                    )
                failing = True
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)
