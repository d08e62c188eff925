"""`GET /status`: where the indexer stands (what the API answers from), and the last audit.

The last audit's figures are also Prometheus gauges on the API's `/metrics` (names fixed: the
dashboards and alerts of `deploy/` use them). They are set from the row `/status` reads, and
every 30 s by each API process (`refresh_audit_gauges`), so they are current whether or not
anyone asks `/status`; the NFT read paths pay nothing.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import asyncpg
from litestar import Controller, Request, get
from prometheus_client import Gauge

from api.schemas import ContractInfo, LastAudit, LastReorg, Status
from db.audits import AuditRun, last_run
from db.engine import DB_ERRORS
from db.reads import followed_contracts
from discograph.encoding import checksum_address

# "mostrecent": with several worker processes, the value of the latest `/status` read wins.
AUDIT_LAST_RUN = Gauge(
    "discograph_audit_last_run_timestamp_seconds",
    "Unix time of the last `discograph audit` (0: none seen yet)",
    multiprocess_mode="mostrecent",
)
AUDIT_DIFFERENCES = Gauge(
    "discograph_audit_differences",
    "Differences between the projection and the chain found by the last audit",
    multiprocess_mode="mostrecent",
)


def _last_audit(run: AuditRun | None) -> LastAudit | None:
    if run is None:
        return None
    AUDIT_LAST_RUN.set(run.at.timestamp())
    AUDIT_DIFFERENCES.set(run.differences)
    return LastAudit(
        at=run.at,
        finalized_block=run.finalized_block,
        tokens=run.tokens,
        differences=run.differences,
        seconds=run.seconds,
    )


log = logging.getLogger("discograph.api")


async def refresh_audit_gauges(pool: asyncpg.Pool, every: float = 30.0) -> None:
    """Keep the audit gauges current from the newest `audit_runs` row (each API process)."""
    failing = False
    while True:
        try:
            _last_audit(await last_run(pool))
            failing = False
        except DB_ERRORS as exc:
            if not failing:
                log.warning("audit gauges not refreshed", extra={"error": repr(exc)[:200]})
            failing = True
        await asyncio.sleep(every)


class StatusController(Controller):
    path = "/status"
    tags = ["status"]

    @get(summary="Indexer status: chain head, indexed block, safe/finalized, lag, last reorg")
    async def status(self, request: Request[Any, Any, Any]) -> Status:
        view = request.state.chain_view
        contracts = [
            ContractInfo(
                chain_id=int(r["chain_id"]),
                address=checksum_address(bytes(r["address"])),
                kind=str(r["kind"]),
                start_block=int(r["start_block"]),
            )
            for r in await followed_contracts(request.app.state.read_pool)
        ]
        pool = request.app.state.read_pool
        chain_id = int(view["chain_id"]) if view is not None else None
        last_audit = _last_audit(await last_run(pool, chain_id))
        if view is None:
            return Status(
                None, None, None, None, None, None, None, None, None, contracts, last_audit
            )
        head = view["head_block"]
        indexed = int(view["block_number"])
        lag_seconds = None
        if view["block_timestamp"] is not None:
            lag_seconds = max((datetime.now(UTC) - view["block_timestamp"]).total_seconds(), 0.0)
        last_reorg = None
        if view["last_reorg_at"] is not None:
            last_reorg = LastReorg(
                depth=int(view["last_reorg_depth"]),
                block=int(view["last_reorg_block"]),
                at=view["last_reorg_at"],
            )
        return Status(
            chain_id=int(view["chain_id"]),
            chain_head=head,
            indexed_block=indexed,
            indexed_block_hash="0x" + bytes(view["block_hash"]).hex(),
            safe_block=view["safe_block"],
            finalized_block=view["finalized_block"],
            lag_blocks=max(head - indexed, 0) if head is not None else None,
            lag_seconds=lag_seconds,
            last_reorg=last_reorg,
            contracts=contracts,
            last_audit=last_audit,
        )
