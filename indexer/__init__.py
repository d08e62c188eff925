"""Chain logs → Postgres projection (built in the indexer issue)."""
