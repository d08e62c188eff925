"""Per-request view of the indexer: the indexed block goes in `X-Indexed-Block` on every read."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope

from db.reads import chain_view

INDEXED_HEADER = "X-Indexed-Block"


async def load_chain_view(request: Request[Any, Any, Any]) -> None:
    """before_request hook of the read routes: what the indexer has committed, right now."""
    view = await chain_view(request.app.state.pool)
    request.state.chain_view = view
    request.state.indexed_block = int(view["block_number"]) if view is not None else -1


async def add_indexed_header(message: Message, scope: Scope) -> None:
    """before_send hook: stamp the block the answer was read at (errors included)."""
    if message["type"] != "http.response.start":
        return
    block = scope.get("state", {}).get("indexed_block")
    if block is not None:
        MutableScopeHeaders.from_message(message)[INDEXED_HEADER] = str(block)
