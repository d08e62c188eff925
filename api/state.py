"""Per-request view of the indexer: the indexed block goes in `X-Indexed-Block` on every read."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.datastructures import MutableScopeHeaders
from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE
from litestar.types import Message, Scope

from api import params
from db.reads import chain_view

INDEXED_HEADER = "X-Indexed-Block"


MIN_BLOCK_WAIT = 5.0  # seconds a `?min_block` read may wait for the indexer


async def load_chain_view(request: Request[Any, Any, Any]) -> None:
    """before_request hook of the read routes: what the indexer has committed, right now.

    With `?min_block=N` the read first waits (bounded) until block N is indexed, so a client
    reads its own writes; on timeout 503 with `Retry-After`.
    """
    wanted = None
    raw = request.query_params.get("min_block")
    if raw is not None:
        wanted = params.block_number("min_block", raw)
    view = await chain_view(request.app.state.pool)
    indexed = int(view["block_number"]) if view is not None else -1
    if wanted is not None and indexed < wanted:
        if await request.app.state.indexed.wait_for(wanted, MIN_BLOCK_WAIT):
            view = await chain_view(request.app.state.pool)
            indexed = int(view["block_number"]) if view is not None else -1
        if indexed < wanted:
            request.state.indexed_block = indexed
            raise HTTPException(
                status_code=HTTP_503_SERVICE_UNAVAILABLE,
                detail=f"not indexed up to block {wanted} yet (indexed: {indexed}); retry",
                headers={"Retry-After": "1"},
                extra={"indexed_block": indexed, "min_block": wanted},
            )
    request.state.chain_view = view
    request.state.indexed_block = indexed


async def add_indexed_header(message: Message, scope: Scope) -> None:
    """before_send hook: stamp the block the answer was read at (errors included)."""
    if message["type"] != "http.response.start":
        return
    block = scope.get("state", {}).get("indexed_block")
    if block is not None:
        MutableScopeHeaders.from_message(message)[INDEXED_HEADER] = str(block)
