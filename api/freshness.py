"""The indexed block, tracked from the indexer's commit notifications: `?min_block` waits
wake on them instead of polling the database in a tight loop.

One LISTEN connection per API process follows `discograph_checkpoint` (sent inside each
indexer transaction, so it arrives when the rows are visible); a slow poll covers missed
notifications and reconnects.

With a read replica (`READ_DATABASE_URL`) the block that counts is the one the replica has
replayed, not the one the primary announced: `ReplicaIndexedBlock` takes the primary's
notification as a hint only, then looks at the replica every few milliseconds until it has
caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from db.engine import DB_ERRORS
from db.locks import CHECKPOINT_CHANNEL
from db.reads import chain_view

log = logging.getLogger("discograph.api")


async def _reconnecting(
    dsn: str,
    what: str,
    retry_every: float,
    use: Callable[[asyncpg.Connection], Awaitable[None]],
) -> None:
    """Run `use` on a connection of its own to `dsn`, on a new one after every database
    error (logged as `<what> lost, retrying`), until cancelled."""
    while True:
        conn: asyncpg.Connection | None = None
        try:
            conn = await asyncpg.connect(dsn)
            await use(conn)
        except asyncio.CancelledError:
            raise
        except DB_ERRORS as exc:
            log.warning("%s lost, retrying", what, extra={"error": repr(exc)})
            await asyncio.sleep(retry_every)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()


class IndexedBlock:
    """The latest indexed block this process knows of, and waiting for a given one."""

    def __init__(self, dsn: str, *, poll: float = 1.0) -> None:
        self.dsn = dsn
        self.poll = poll
        self.block = -1
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        view = None
        with contextlib.suppress(*DB_ERRORS):
            conn = await asyncpg.connect(self.dsn)
            try:
                view = await chain_view(conn)
            finally:
                await conn.close()
        if view is not None:
            await self._set(int(view["block_number"]))
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _set(self, block: int) -> None:
        async with self._changed:
            self.block = block  # a rollback may move it down: the newest answer wins
            self._changed.notify_all()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            block = int(payload.split(":")[1])  # "<chain_id>:<block>:<hash>:<rollbacks>"
        except (IndexError, ValueError):
            return
        asyncio.get_running_loop().create_task(self._set(block))

    async def _follow(self) -> None:
        await _reconnecting(self.dsn, "indexed-block listener", self.poll, self._follow_on)

    async def _follow_on(self, conn: asyncpg.Connection) -> None:
        try:
            await conn.add_listener(CHECKPOINT_CHANNEL, self._on_notify)
        except asyncpg.PostgresError as exc:
            # A read replica cannot LISTEN: polling alone keeps the version moving.
            log.warning("LISTEN refused, polling only", extra={"error": repr(exc)})
        while True:
            view = await chain_view(conn)
            if view is not None:
                await self._set(int(view["block_number"]))
            await asyncio.sleep(self.poll)

    async def wait_for(self, block: int, timeout: float) -> bool:
        """True once the indexed block reaches `block`; False after `timeout` seconds."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.block >= block), timeout)
            except TimeoutError:
                return False
        return True


def _position(view: asyncpg.Record) -> tuple[int, int]:
    """Where a checkpoint stands in commit order: a rollback raises `rollbacks` (and may lower
    the block), so (rollbacks, block) only grows from one indexer commit to the next."""
    return int(view["rollbacks"]), int(view["block_number"])


class ReplicaIndexedBlock(IndexedBlock):
    """The latest block a streaming replica has replayed, and waiting for a given one.

    Replicas cannot LISTEN, and a notification from the primary only says that the replica
    will have the block soon. So: LISTEN on the primary (plus a slow poll of its checkpoint,
    for missed notifications) to learn the newest commit; after each one, read the replica's
    checkpoint every `chase_every` seconds until it has replayed that commit (for at most
    `chase_for` seconds: a replica whose replay stopped is left to the slow poll). `block`
    only ever reports what the replica's checkpoint row says.
    """

    def __init__(
        self,
        primary_dsn: str,
        replica_dsn: str,
        *,
        poll: float = 1.0,
        chase_every: float = 0.015,
        chase_for: float = 10.0,
    ) -> None:
        super().__init__(replica_dsn, poll=poll)
        self.primary_dsn = primary_dsn
        self.chase_every = chase_every
        self.chase_for = chase_for
        self.primary_block = -1  # the newest block the primary committed, as far as we know
        self._announced: tuple[int, int] | None = None  # its (rollbacks, block)
        self._replayed: tuple[int, int] | None = None  # the replica's (rollbacks, block)
        self._chase_until = 0.0
        self._news = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await super().start()  # the replica's block now, then `_follow` tracks it
        self._listener = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await super().stop()

    def _announce(self, position: tuple[int, int], *, polled: bool = False) -> None:
        """A commit on the primary. Notifications only move forward; the poll tells the truth
        (after a `discograph reindex` the position starts over)."""
        known = self._announced
        if known is not None and (position == known or (position < known and not polled)):
            return
        self._announced = position
        self.primary_block = position[1]
        if self._replayed is None or self._replayed < position:
            self._chase_until = time.monotonic() + self.chase_for
            self._news.set()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        parts = payload.split(":")  # "<chain_id>:<block>:<hash>:<rollbacks>"
        try:
            self._announce((int(parts[3]), int(parts[1])))
        except (IndexError, ValueError):
            return

    async def _listen(self) -> None:
        """The primary's commits: notifications, and a slow poll for missed ones."""
        await _reconnecting(
            self.primary_dsn, "primary checkpoint listener", self.poll, self._listen_on
        )

    async def _listen_on(self, conn: asyncpg.Connection) -> None:
        await conn.add_listener(CHECKPOINT_CHANNEL, self._on_notify)
        while True:
            view = await chain_view(conn)
            if view is not None:
                self._announce(_position(view), polled=True)
            await asyncio.sleep(self.poll)

    async def _follow(self) -> None:
        """The replica's checkpoint: quickly while it is behind an announced commit, else
        slowly (or at the next announcement)."""
        await _reconnecting(self.dsn, "replica checkpoint reader", self.poll, self._follow_on)

    async def _follow_on(self, conn: asyncpg.Connection) -> None:
        while True:
            self._news.clear()  # news arriving during the read is kept for the wait
            view = await chain_view(conn)
            if view is not None:
                self._replayed = _position(view)
                await self._set(int(view["block_number"]))
            behind = self._announced is not None and (
                self._replayed is None or self._replayed < self._announced
            )
            if behind and time.monotonic() < self._chase_until:
                await asyncio.sleep(self.chase_every)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), self.poll)


class CheckpointReads:
    """Reads of the checkpoint row shared by concurrent requests, without ever answering a
    request from a read that started before it.

    A request joins the next read that has not started yet; one read runs at a time, and it
    serves every request that arrived before it began. So a request that starts after a commit
    always gets a read that started after the commit too (read-after-commit holds), while
    under load one query serves many requests instead of one each.
    """

    def __init__(self, fetch: Callable[[], Awaitable[Any]]) -> None:
        self.fetch = fetch  # e.g. `lambda: chain_view(pool)`
        self._waiting: asyncio.Future[Any] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    async def read(self) -> Any:
        if self._waiting is None:
            self._waiting = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().create_task(self._run(self._waiting))
        return await asyncio.shield(self._waiting)

    async def _run(self, batch: asyncio.Future[Any]) -> None:
        await self._idle.wait()  # the read in flight finishes first: arrivals join `batch`
        self._idle.clear()
        self._waiting = None  # from now on, arrivals wait for the next read
        try:
            batch.set_result(await self.fetch())
        except BaseException as exc:
            batch.set_exception(exc)
            batch.exception()  # retrieved here; each waiter re-raises it
        finally:
            self._idle.set()


class CheckpointConnection:
    """The connection `CheckpointReads` reads through: its own, since reads run one at a time,
    so the hottest query of the API skips the pool's acquire/release. Opened on first use and
    again after a failure (the failing request gets the error: 503 while Postgres is away)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: asyncpg.Connection | None = None

    async def fetch(self) -> asyncpg.Record | None:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.dsn)
        try:
            return await chain_view(self._conn)
        except DB_ERRORS:
            await self.close()
            raise

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)
