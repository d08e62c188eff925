"""The minter's Prometheus metrics (DESIGN.md, Metrics), created once per process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

MINT_TRANSITIONS = Counter(
    "discograph_mint_requests_total",
    "Mint request status changes committed by the minter, by previous and new status",
    ["from_status", "to_status"],
)
NONCE_GAPS = Gauge(
    "discograph_nonce_gaps",
    "Nonces between the node's mined count and our next nonce with no recorded tx (must be 0)",
)
INFLIGHT = Gauge(
    "discograph_minter_inflight",
    "Mint requests sent and not yet final (submitted, mined or confirmed)",
)
TXS_SIGNED = Counter(
    "discograph_mint_txs_signed_total",
    "Mint transactions signed: first sends and fee-bumped replacements",
    ["kind"],
)
REBROADCASTS = Counter(
    "discograph_mint_rebroadcasts_total",
    "Recorded mint transactions sent again (after a reorg, a restart or a node that lost them)",
    ["reason"],
)
GAPS_FILLED = Counter(
    "discograph_nonce_gaps_filled_total",
    "Nonces another sender of the key left empty (its transaction dropped), filled with a "
    "0-value transfer to self so the mints behind them can be mined",
)
