"""Liveness and readiness probes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from litestar import Controller, Request, Response, get
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from api.cache import CACHE_STORE, FailSoftStore
from api.schemas import Health
from db.engine import DB_ERRORS
from db.reads import chain_view

# The active indexer touches its checkpoint at least every POLL_INTERVAL (default 1 s).
INDEXER_SILENCE = 60.0
REPLICA_BLOCK_HEADER = "X-Replica-Indexed-Block"
REPLICA_LAG_HEADER = "X-Replica-Lag-Blocks"


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get("/live", summary="The process answers")
    async def live(self) -> dict[str, str]:
        return {"status": "ok"}

    @get("/ready", summary="Postgres answers and the indexer is within READY_MAX_LAG blocks")
    async def ready(self, request: Request[Any, Any, Any]) -> Response[Health]:
        max_lag = request.app.state.settings.ready_max_lag
        try:
            view = await chain_view(request.app.state.pool)
        except DB_ERRORS:
            return Response(
                Health("unavailable", database=False, detail="database unreachable"),
                status_code=HTTP_503_SERVICE_UNAVAILABLE,
            )
        if view is None:
            return Response(
                Health("unavailable", database=True, detail="nothing indexed yet"),
                status_code=HTTP_503_SERVICE_UNAVAILABLE,
            )
        indexed = int(view["block_number"])
        head = view["head_block"]
        lag = max(head - indexed, 0) if head is not None else None
        silent = (datetime.now(UTC) - view["updated_at"]).total_seconds()
        if silent > INDEXER_SILENCE:
            # A stopped indexer freezes its own lag figure: its silence gives it away.
            return Response(
                Health("unavailable", True, indexed, lag, f"indexer silent for {silent:.0f}s"),
                status_code=HTTP_503_SERVICE_UNAVAILABLE,
            )
        if lag is not None and lag > max_lag:
            return Response(
                Health("unavailable", True, indexed, lag, f"indexer lags more than {max_lag}"),
                status_code=HTTP_503_SERVICE_UNAVAILABLE,
            )
        headers: dict[str, str] = {}
        degraded: list[str] = []
        if request.app.state.read_pool is not request.app.state.pool:
            # Every API process shares the replica: taking them all out of rotation would not
            # help its readers, and would stop the writes, which do not need it. Say it.
            try:
                replica = await chain_view(request.app.state.read_pool)
            except DB_ERRORS:
                degraded.append("read replica unreachable")
            else:
                replayed = int(replica["block_number"]) if replica is not None else -1
                behind = max(indexed - replayed, 0)
                headers = {REPLICA_BLOCK_HEADER: str(replayed), REPLICA_LAG_HEADER: str(behind)}
                if behind > max_lag:
                    # Reads still answer, stamped with the replica's (older) block.
                    degraded.append(f"read replica {behind} blocks behind the primary")
        cache = request.app.stores.get(CACHE_STORE)
        if isinstance(cache, FailSoftStore) and not cache.healthy:
            # Still serving (from Postgres): ready, but say the cache is out.
            degraded.append("response cache (Redis) unavailable")
        if degraded:
            return Response(
                Health("degraded", True, indexed, lag, "; ".join(degraded)),
                status_code=HTTP_200_OK,
                headers=headers,
            )
        return Response(Health("ok", True, indexed, lag), status_code=HTTP_200_OK, headers=headers)
