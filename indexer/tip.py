"""Tip-following above the safe head, block by block, with reorg repair.

Each block's header must extend the stored chain (its `parentHash` is the hash we stored for
the block before); its logs are fetched by block hash (EIP-234), so logs and header come
from the same fork. A parent mismatch or a head below our tip is re-checked against every
node before anything is rolled back: a lagging replica is not a reorg.
"""

from __future__ import annotations

import asyncio
import logging
import time

from indexer import metrics
from indexer.context import Context
from indexer.decode import block_may_have_logs
from indexer.errors import InconsistentAnswer
from indexer.reorg import diverged, find_common_ancestor
from indexer.source import Header
from indexer.store import Checkpoint

log = logging.getLogger("discograph.indexer")


async def step(ctx: Context, tip: Checkpoint, until: int) -> bool:
    """Index the next tip blocks (up to `tip_batch` of them, not past `until`).

    Returns True when it made progress or repaired a reorg, False when there was nothing
    new (or the node's answer must be re-checked later): the caller then waits.
    """
    head = ctx.view.head
    if head < tip.block_number:
        return await _head_below_tip(ctx, tip, head)
    last = min(head, until, tip.block_number + ctx.tip_limit)
    if last <= tip.block_number:
        return False
    fetched = await ctx.source.headers(list(range(tip.block_number + 1, last + 1)))
    headers: list[Header] = []
    parent = tip.block_hash
    for header in fetched:
        if header is None:
            break  # the node does not have it yet: take what precedes
        if header.parent_hash != parent:
            if not headers:
                return await _parent_mismatch(ctx, tip)
            break  # the node switched forks within our request: the rest next round
        headers.append(header)
        parent = header.hash
    if not headers:
        return False
    logs = await ctx.source.logs_of_blocks(headers)
    logs = await _recheck_empty_answers(ctx, headers, logs)
    began = time.perf_counter()
    batch = await ctx.build_batch(
        headers[0].number,
        headers[-1],
        [entry for block_logs in logs for entry in block_logs],
        window=headers,
        announce=True,
    )
    await ctx.store.commit(batch)
    ctx.account(batch, time.perf_counter() - began, "tip")
    ctx.tip_limit = min(ctx.config.tip_batch, ctx.tip_limit * 2)
    return True


async def _recheck_empty_answers(
    ctx: Context, headers: list[Header], logs: list[list[dict[str, object]]]
) -> list[list[dict[str, object]]]:
    """An empty answer for a block whose bloom says it may hold our logs is asked again:
    some nodes answer `[]` for a block hash they have not processed yet."""
    for attempt in range(ctx.config.empty_log_retries):
        suspects = [
            i
            for i, (header, block_logs) in enumerate(zip(headers, logs, strict=True))
            if not block_logs and block_may_have_logs(header.logs_bloom, ctx.source.contracts)
        ]
        if not suspects:
            return logs
        metrics.SUSPECT_ANSWERS.labels(reason="empty_logs_vs_bloom").inc(len(suspects))
        await asyncio.sleep(ctx.config.recheck_wait * (attempt + 1))
        again = await ctx.source.logs_of_blocks([headers[i] for i in suspects])
        for i, block_logs in zip(suspects, again, strict=True):
            logs[i] = block_logs
    # Still empty: ask the block's receipts, an independent answer. Empty there too means
    # the bloom filter matched by chance (it can); no receipts support means we must trust.
    for i, (header, block_logs) in enumerate(zip(headers, logs, strict=True)):
        if block_logs or not block_may_have_logs(header.logs_bloom, ctx.source.contracts):
            continue
        from_receipts = await ctx.source.logs_from_receipts(header)
        if from_receipts:
            metrics.SUSPECT_ANSWERS.labels(reason="logs_found_in_receipts").inc()
            log.warning(
                "eth_getLogs kept answering [] for a block with our logs: used its receipts",
                extra={"block": header.number},
            )
            logs[i] = from_receipts
        elif from_receipts is None:
            log.warning(
                "empty eth_getLogs answer not confirmable (no eth_getBlockReceipts): trusted",
                extra={"block": header.number},
            )
    return logs


async def _head_below_tip(ctx: Context, tip: Checkpoint, head: int) -> bool:
    """The node reports a head below what we indexed: lagging replica, or a shorter fork."""
    metrics.SUSPECT_ANSWERS.labels(reason="head_below_tip").inc()
    window = await ctx.store.window()
    known = [n for n in window if n <= head]
    if not known:
        return False
    probe = max(known)
    if not await diverged(ctx.source, probe, window[probe], ctx.config.recheck_wait):
        log.info(
            "node head is below the indexed tip but agrees with our blocks: waiting",
            extra={"head": head, "tip": tip.block_number},
        )
        return False
    await _repair(ctx, tip, window, below=probe)
    return True


async def _parent_mismatch(ctx: Context, tip: Checkpoint) -> bool:
    """Block tip+1 does not extend our tip: a reorg, if every node confirms it."""
    if not await diverged(ctx.source, tip.block_number, tip.block_hash, ctx.config.recheck_wait):
        metrics.SUSPECT_ANSWERS.labels(reason="parent_mismatch_not_confirmed").inc()
        log.info(
            "parent mismatch not confirmed by the nodes: retrying",
            extra={"block": tip.block_number + 1},
        )
        return False
    window = await ctx.store.window()
    await _repair(ctx, tip, window, below=tip.block_number)
    return True


async def _repair(ctx: Context, tip: Checkpoint, window: dict[int, bytes], below: int) -> None:
    began = time.perf_counter()
    ancestor = await find_common_ancestor(
        ctx.source,
        window,
        below,
        tip=tip.block_number,
        reorg_window=ctx.config.reorg_window,
        finalized=ctx.view.finalized,
    )
    depth = tip.block_number - ancestor.number
    result = await ctx.store.rollback(ancestor, depth)
    seconds = time.perf_counter() - began
    metrics.REORGS.inc()
    metrics.REORG_DEPTH.observe(depth)
    metrics.INDEXED_BLOCK.set(ancestor.number)
    log.warning(
        "reorg repaired",
        extra={
            "depth": depth,
            "ancestor": ancestor.number,
            "removed_transfers": result.removed_transfers,
            "removed_token_events": result.removed_token_events,
            "tokens_recomputed": result.tokens_recomputed,
            "seconds": round(seconds, 4),
        },
    )


async def verify_tip(ctx: Context, tip: Checkpoint) -> bool:
    """On start: is the stored tip still canonical? Repairs a reorg that happened while down.

    Returns False when the node does not have our tip block yet (lagging): the loop waits.
    """
    (header,) = await ctx.source.headers([tip.block_number])
    if header is None:
        return False
    if header.hash == tip.block_hash:
        return True
    if not await diverged(ctx.source, tip.block_number, tip.block_hash, ctx.config.recheck_wait):
        raise InconsistentAnswer("the nodes disagree about our tip block: retrying")
    window = await ctx.store.window()
    await _repair(ctx, tip, window, below=tip.block_number)
    return True
