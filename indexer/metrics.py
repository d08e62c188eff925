"""The indexer's Prometheus metrics (DESIGN.md, Metrics), created once per process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CHAIN_HEAD = Gauge("discograph_chain_head_block", "Latest block number the node reported")
INDEXED_BLOCK = Gauge("discograph_indexed_block", "Last block committed to Postgres")
SAFE_BLOCK = Gauge("discograph_safe_block", "Block below which the indexer backfills")
LAG_BLOCKS = Gauge("discograph_lag_blocks", "Chain head minus indexed block")
LAG_SECONDS = Gauge("discograph_lag_seconds", "Now minus the timestamp of the indexed block")
EVENTS = Counter("discograph_events_indexed_total", "Chain events committed", ["kind"])
BATCH_SECONDS = Histogram(
    "discograph_batch_duration_seconds",
    "Time to commit one batch",
    ["mode"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REORGS = Counter("discograph_reorgs_total", "Chain reorganisations repaired")
REORG_DEPTH = Histogram(
    "discograph_reorg_depth",
    "Depth of repaired reorgs in blocks",
    buckets=(1, 2, 3, 5, 8, 13, 21, 34, 64, 128),
)
SUSPECT_ANSWERS = Counter(
    "discograph_suspect_answers_total",
    "Node answers not trusted (retried): lagging head, inconsistent logs, empty logs vs bloom",
    ["reason"],
)
