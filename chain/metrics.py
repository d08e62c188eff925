"""Prometheus metrics of the chain package: JSON-RPC requests, errors and latency by method.

The metric objects live at module level on purpose: prometheus_client registers each name once
per process in its default registry, so they must be created exactly once (by this import).
Labels stay low-cardinality: `method` is a JSON-RPC method name (or "batch"), `kind` an error
class name, `url` / `from_url` a position in RPC_URL ("0", "1", ...: a URL may hold an API key).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RPC_REQUESTS = Counter(
    "discograph_rpc_requests_total",
    "JSON-RPC requests sent to a node, every attempt counted (a batch counts once, as 'batch').",
    ["method"],
)

RPC_ERRORS = Counter(
    "discograph_rpc_errors_total",
    "JSON-RPC requests that failed, by method and error class.",
    ["method", "kind"],
)

RPC_LATENCY = Histogram(
    "discograph_rpc_latency_seconds",
    "Time from sending a JSON-RPC request to its answer or failure.",
    ["method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

RPC_URL_ERRORS = Counter(
    "discograph_rpc_url_errors_total",
    "Failed JSON-RPC attempts by the URL's position in RPC_URL (never the URL: it may hold a key)"
    " and error class.",
    ["url", "kind"],
)

RPC_FAILOVERS = Counter(
    "discograph_rpc_failovers_total",
    "Moves to the next RPC_URL entry after a failed attempt, by the position of the URL left.",
    ["from_url"],
)
