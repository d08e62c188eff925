"""The sync loop: verify the stored tip, backfill to the safe head, then follow the tip.

Transient trouble (node errors, suspicious answers) is retried with backoff and never
committed; a reorg deeper than the kept window or a lost lease stops the loop with a clear
error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from chain.errors import ChainError
from db.engine import DB_ERRORS
from indexer import metrics
from indexer.backfill import backfill
from indexer.context import Context
from indexer.errors import LeaseLost, MalformedAnswer, ReorgTooDeep
from indexer.projection import StaleBatch
from indexer.store import Checkpoint
from indexer.tip import step, verify_tip

log = logging.getLogger("discograph.indexer")
HEAD = -1  # `until=HEAD`: index up to the head seen at start, then return
ANALYZE_AFTER_EVENTS = 10_000  # a backfill this large refreshes the planner's statistics


class Indexer:
    def __init__(self, ctx: Context, *, wake: asyncio.Event | None = None) -> None:
        self.ctx = ctx
        # Set by a newHeads subscription when a block arrives; polling is the fallback.
        self.wake = wake or asyncio.Event()
        self.indexed = asyncio.Event()  # set after every commit (the dev stack waits on it)
        self.tip: Checkpoint | None = None

    async def _refresh_view(self) -> None:
        view = self.ctx.view
        view.head = await self.ctx.source.head()
        view.safe, view.finalized = await self.ctx.source.safety()
        metrics.CHAIN_HEAD.set(view.head)
        metrics.SAFE_BLOCK.set(view.safe_head(self.ctx.config.confirmations))

    async def _start_point(self) -> Checkpoint | None:
        tip = await self.ctx.store.checkpoint()
        if tip is not None:
            metrics.INDEXED_BLOCK.set(tip.block_number)
        return tip

    async def run(self, until: int | None = None) -> int:
        """Index until block `until` (None: forever; `HEAD`: the head at start).

        Returns the last indexed block.
        """
        failures = 0
        verified = False
        target: int | None = until
        while True:
            try:
                await self._refresh_view()
                if target == HEAD:
                    target = self.ctx.view.head
                self.tip = await self._start_point()
                if self.tip is not None and not verified:
                    verified = await verify_tip(self.ctx, self.tip)
                    self.tip = await self._start_point()
                    if not verified:
                        await self._idle()
                        continue
                verified = True
                progressed = await self._advance(target)
                failures = 0
                self.tip = await self._start_point()
                indexed = self.tip.block_number if self.tip else -1
                if target is not None and indexed >= target:
                    self.ctx.progress.done()
                    return indexed
                if not progressed:
                    if self.tip is not None:
                        await self.ctx.store.record_chain_view(
                            self.ctx.view.head, self.ctx.view.safe, self.ctx.view.finalized
                        )
                    await self._idle()
            except (ReorgTooDeep, LeaseLost):
                self.ctx.progress.done()
                raise
            except (ChainError, MalformedAnswer, StaleBatch, *DB_ERRORS) as exc:
                failures += 1
                self.ctx.tip_limit = max(1, self.ctx.tip_limit // 2)
                delay = random.uniform(0, min(10.0, 0.2 * 2**failures))  # noqa: S311
                metrics.SUSPECT_ANSWERS.labels(reason=type(exc).__name__).inc()
                log.warning(
                    "indexing step failed, retrying",
                    extra={
                        "error": type(exc).__name__,
                        "detail": str(exc)[:200],
                        "retry_in": round(delay, 2),
                    },
                )
                await asyncio.sleep(delay)

    async def _advance(self, target: int | None) -> bool:
        config, view = self.ctx.config, self.ctx.view
        safe_head = view.safe_head(config.confirmations)
        if target is not None:
            safe_head = min(safe_head, target)
        next_block = self.tip.block_number + 1 if self.tip else config.start_block
        if next_block <= safe_head:
            events_before = self.ctx.progress.events
            await backfill(self.ctx, next_block, safe_head)
            if self.ctx.progress.events - events_before >= ANALYZE_AFTER_EVENTS:
                await self.ctx.store.analyze()
            self.indexed.set()
            return True
        if self.tip is None:
            # Nothing below the safe head to backfill and no checkpoint yet: start the tip
            # at the first block through a one-block backfill (it stores the checkpoint).
            end = min(view.head, target if target is not None else view.head)
            if next_block > end:
                return False
            await backfill(self.ctx, next_block, next_block)
            self.indexed.set()
            return True
        limit = target if target is not None else view.head
        progressed = await step(self.ctx, self.tip, limit)
        if progressed:
            self.indexed.set()
        return progressed

    async def _idle(self) -> None:
        self.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), self.ctx.config.poll_interval)
