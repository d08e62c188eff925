"""Reorg detection helpers: confirm a divergence before trusting it, find the common ancestor."""

from __future__ import annotations

import asyncio
import logging

from indexer.errors import ReorgTooDeep
from indexer.source import ChainSource, Header

log = logging.getLogger("discograph.indexer")
_CHUNK = 16


async def diverged(source: ChainSource, number: int, stored_hash: bytes, wait: float) -> bool:
    """Whether block `number` is really no longer `stored_hash` on the chain.

    Asked again after `wait`, of every configured node: a node that still has our block
    (a lagging replica) or that does not have the block at all proves nothing, so the
    divergence counts only when every node that answers has another hash.
    """
    await asyncio.sleep(wait)
    hashes = await source.header_hashes_everywhere(number)
    answered = [h for h in hashes if h is not None]
    if not answered:
        return False
    return all(h != stored_hash for h in answered)


async def find_common_ancestor(
    source: ChainSource,
    window: dict[int, bytes],
    below: int,
    *,
    tip: int,
    reorg_window: int,
    finalized: int | None,
) -> Header:
    """The highest stored block at or below `below` that is still canonical on the node.

    Raises `ReorgTooDeep` when no stored block matches: the fork point is older than what we
    kept, and only `discograph reindex` can rebuild from a known-good block.
    """
    numbers = sorted((n for n in window if n <= below), reverse=True)
    for start in range(0, len(numbers), _CHUNK):
        chunk = numbers[start : start + _CHUNK]
        for header in await source.headers(chunk):
            if header is not None and header.hash == window[header.number]:
                return header
    oldest = min(window) if window else below
    suggested = (finalized + 1) if finalized is not None else max(0, below - 2 * reorg_window)
    raise ReorgTooDeep(tip, oldest, reorg_window, min(suggested, oldest))
