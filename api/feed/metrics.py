"""Prometheus metrics of the websocket feed (multi-process safe: gauges sum live workers)."""

from prometheus_client import Counter, Gauge, Histogram

CLIENTS = Gauge(
    "discograph_feed_clients",
    "Websocket feed connections open",
    multiprocess_mode="livesum",
)
MESSAGES_SENT = Counter("discograph_feed_messages_sent", "Feed messages sent to clients")
CLOSES = Counter(
    "discograph_feed_closes", "Feed connections closed by the server, by code", ["code"]
)
SLOW_CONSUMER_CLOSES = Counter(
    "discograph_feed_slow_consumer_closes",
    "Feed connections closed because their queue overflowed (4008)",
)
PUBLISH_LAG = Histogram(
    "discograph_feed_publish_lag_seconds",
    "Time from an outbox row's transaction start to its publication to the API processes",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PUBLISHER = Gauge(
    "discograph_feed_publisher",
    "1 in the API process that publishes outbox rows to Redis (one per database)",
    multiprocess_mode="livesum",
)
CATCH_UP_ROWS = Counter(
    "discograph_feed_catch_up_rows",
    "Outbox rows an API process read from Postgres because Redis had not brought them",
)
