"""What every part of the sync loop shares: configuration, the chain source, the store."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from indexer import metrics
from indexer.decode import decode_logs
from indexer.progress import Progress
from indexer.projection import Batch
from indexer.source import ChainSource, Header
from indexer.store import Store

log = logging.getLogger("discograph.indexer")


@dataclass(frozen=True)
class IndexerConfig:
    chain_id: int
    album_contracts: frozenset[bytes]
    contracts: tuple[bytes, ...]
    start_block: int = 0
    confirmations: int = 12
    reorg_window: int = 128
    poll_interval: float = 1.0
    # At most this many tip blocks are verified and committed together when catching up.
    tip_batch: int = 32
    # How long to wait before re-asking the nodes about a suspected reorg or an empty answer.
    recheck_wait: float = 0.1
    empty_log_retries: int = 3


@dataclass
class ChainView:
    head: int = 0
    safe: int | None = None
    finalized: int | None = None

    def safe_head(self, confirmations: int) -> int:
        """Where backfill may go: the finalized block when the node has the tag."""
        if self.finalized is not None:
            return self.finalized
        return max(self.head - confirmations, 0)


@dataclass
class Context:
    config: IndexerConfig
    source: ChainSource
    store: Store
    progress: Progress = field(default_factory=Progress)
    view: ChainView = field(default_factory=ChainView)
    # How many tip blocks go in one request: halved after a failed step (a node that fails
    # large batches still lets us advance), doubled back after each success.
    tip_limit: int = 0

    def __post_init__(self) -> None:
        self.tip_limit = self.tip_limit or self.config.tip_batch

    def account(self, batch: Batch, seconds: float, mode: str) -> None:
        """After a commit: progress, metrics and the batch's one log line."""
        blocks = batch.last.number - batch.first + 1
        self.progress.advance(blocks, batch.events)
        metrics.BATCH_SECONDS.labels(mode=mode).observe(seconds)
        metrics.EVENTS.labels(kind="transfer").inc(len(batch.transfers))
        if batch.token_events:
            metrics.EVENTS.labels(kind="token_event").inc(len(batch.token_events))
        lag = max(self.view.head - batch.last.number, 0)
        metrics.INDEXED_BLOCK.set(batch.last.number)
        metrics.LAG_BLOCKS.set(lag)
        metrics.LAG_SECONDS.set(max(time.time() - batch.last.timestamp, 0))
        # Empty tip blocks (one per block on an idle chain) only at DEBUG.
        level = logging.INFO if batch.events or mode == "backfill" else logging.DEBUG
        log.log(
            level,
            "batch committed",
            extra={
                "mode": mode,
                "first": batch.first,
                "last": batch.last.number,
                "blocks": blocks,
                "events": batch.events,
                "seconds": round(seconds, 4),
                "lag": lag,
            },
        )

    async def build_batch(
        self,
        first: int,
        last: Header,
        logs: list[dict[str, Any]],
        *,
        window: list[Header] | None = None,
        announce: bool = False,
    ) -> Batch:
        """Decode logs and read the URIs that metadata updates point at (state of that block)."""
        decoded = decode_logs(self.config.chain_id, logs, self.config.album_contracts)
        if decoded.clipped:
            log.warning("BatchMetadataUpdate clipped", extra={"tokens_left_out": decoded.clipped})
        events = decoded.token_events
        pending = [i for i, e in enumerate(events) if e.kind == "metadata_update"]
        if pending:
            uris = await self.source.token_uris(
                [(events[i].contract, events[i].token_id, events[i].block_hash) for i in pending]
            )
            for i, uri in zip(pending, uris, strict=True):
                events[i] = events[i]._replace(token_uri=uri)
        return Batch(
            chain_id=self.config.chain_id,
            first=first,
            last=last,
            transfers=decoded.transfers,
            token_events=events,
            window=window or [],
            head=self.view.head,
            safe=self.view.safe,
            finalized=self.view.finalized,
            announce=announce,
        )
