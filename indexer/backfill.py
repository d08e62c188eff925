"""Backfill: block ranges up to the safe head, fetched while the previous range is written.

Ranges adapt to the node: halved on "too many results", timeouts or oversized answers, grown
while answers stay small. Logs are decoded by slicing topics and written set-based (COPY, one
statement per table), one transaction per range.
"""

from __future__ import annotations

import asyncio
import logging
import time

from chain.errors import RpcError, RpcMalformedResponse, RpcTransportError
from indexer import metrics
from indexer.context import Context
from indexer.errors import MalformedAnswer
from indexer.projection import Batch
from indexer.source import is_too_many_results

log = logging.getLogger("discograph.indexer")
WRITERS = 2


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception of a task group that is not a cancellation caused by it."""
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return first_error(error)
        if not isinstance(error, asyncio.CancelledError):
            return error
    return group.exceptions[0]


class RangeSizer:
    """Block-range size for eth_getLogs, aiming at about `target_logs` logs per answer."""

    def __init__(
        self,
        initial: int = 100,
        *,
        minimum: int = 1,
        maximum: int = 50_000,
        target_logs: int = 10_000,
    ) -> None:
        self.size = initial
        self.minimum = minimum
        self.maximum = maximum
        self.target_logs = target_logs

    def shrink(self) -> None:
        self.size = max(self.minimum, self.size // 2)

    def observe(self, logs: int, blocks: int) -> None:
        if logs > 2 * self.target_logs:
            self.size = max(self.minimum, blocks // 2)
        elif logs > self.target_logs:
            self.size = max(self.minimum, int(blocks * self.target_logs / logs))
        elif logs < self.target_logs // 2 and blocks >= self.size:
            self.size = min(self.maximum, self.size * 2)


async def _fetch(ctx: Context, first: int, end: int, sizer: RangeSizer, *, announce: bool) -> Batch:
    """One range starting at `first`, shrinking the range until the node answers it."""
    failures = 0
    while True:
        last = min(end, first + sizer.size - 1)
        try:
            logs, header = await ctx.source.logs_in_range(first, last)
        except RpcError as exc:
            if not is_too_many_results(exc) or last == first:
                raise
            log.info("range too large for the node, halving", extra={"blocks": last - first + 1})
            sizer.shrink()
            continue
        except (RpcTransportError, RpcMalformedResponse, MalformedAnswer) as exc:
            # The fail-over client already retried; a range that keeps failing may be too big.
            failures += 1
            metrics.SUSPECT_ANSWERS.labels(reason=type(exc).__name__).inc()
            log.warning(
                "range fetch failed, retrying smaller",
                extra={"first": first, "last": last, "error": type(exc).__name__},
            )
            sizer.shrink()
            await asyncio.sleep(min(0.1 * 2**failures, 5.0))
            continue
        sizer.observe(len(logs), last - first + 1)
        return await ctx.build_batch(first, header, logs, announce=announce)


async def backfill(ctx: Context, first: int, end: int) -> int:
    """Index blocks `first..end` (end included); returns the last committed block.

    History from before the feed began is not announced (the API serves it); once the feed
    has started, blocks backfilled after a downtime are announced like tip blocks, so feed
    clients see no gap.
    """
    announce = await ctx.store.feed_started()
    queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=2)
    sizer = RangeSizer()
    committed = first - 1

    async def produce() -> None:
        start = first
        while start <= end:
            batch = await _fetch(ctx, start, end, sizer, announce=announce)
            await queue.put(batch)
            start = batch.last.number + 1
        await queue.put(None)

    async def write(
        batch: Batch, after: asyncio.Future[None] | None, done: asyncio.Future[None]
    ) -> None:
        nonlocal committed
        began = time.perf_counter()
        try:
            await ctx.store.commit(batch, after)
        except BaseException as exc:
            done.set_exception(exc)
            raise
        done.set_result(None)
        committed = batch.last.number
        ctx.account(batch, time.perf_counter() - began, "backfill")
        ctx.progress.show(committed, end, ctx.view.head)

    async def consume(group: asyncio.TaskGroup) -> None:
        # Two writers: the next batch copies its events while the previous one finishes;
        # the checkpoint still moves strictly in order (see Store.commit).
        slots = asyncio.Semaphore(WRITERS)
        previous: asyncio.Future[None] | None = None
        loop = asyncio.get_running_loop()
        while (batch := await queue.get()) is not None:
            await slots.acquire()
            done: asyncio.Future[None] = loop.create_future()
            done.add_done_callback(lambda f: f.cancelled() or f.exception())  # mark retrieved
            task = group.create_task(write(batch, previous, done))
            task.add_done_callback(lambda _: slots.release())
            previous = done

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(produce())
            group.create_task(consume(group))
    except BaseExceptionGroup as failed:
        # Callers handle plain errors (retry, stop): surface the first real one.
        raise first_error(failed) from None
    ctx.progress.show(committed, end, ctx.view.head, force=True)
    return committed
