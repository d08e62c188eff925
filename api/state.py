"""Per-request view of the indexer for route handlers, and the headers every read carries."""

from __future__ import annotations

from typing import Any

from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope
from litestar.utils.scope.state import ScopeState

from api.schemas import Finality

INDEXED_HEADER = "X-Indexed-Block"
CACHE_HEADER = "X-Cache"


def finality_of(block: int, view: Any) -> Finality:
    """How sure the indexer is of a fact from `block`, from its view of the chain (the
    checkpoint row's safe and finalized blocks)."""
    if view is not None:
        if view["finalized_block"] is not None and block <= view["finalized_block"]:
            return "finalized"
        if view["safe_block"] is not None and block <= view["safe_block"]:
            return "safe"
    return "unsafe"


async def add_read_headers(message: Message, scope: Scope) -> None:
    """before_send hook: stamp the indexed block the answer was read at (errors included),
    and whether it came from the response cache."""
    if message["type"] != "http.response.start":
        return
    headers = MutableScopeHeaders.from_message(message)
    block = scope.get("state", {}).get("indexed_block")
    if block is not None:
        headers[INDEXED_HEADER] = str(block)
    if ScopeState.from_scope(scope).is_cached is True:
        headers[CACHE_HEADER] = "hit"
