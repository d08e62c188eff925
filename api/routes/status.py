"""`GET /status`: where the indexer stands (what the API answers from)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from litestar import Controller, Request, get

from api.schemas import ContractInfo, LastReorg, Status
from db.reads import followed_contracts
from discograph.encoding import checksum_address


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
        if view is None:
            return Status(None, None, None, None, None, None, None, None, None, contracts)
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
        )
