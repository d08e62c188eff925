"""Per-request view of the indexer for route handlers, and the headers every read carries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope
from litestar.utils.scope.state import ScopeState

from api.schemas import Finality

INDEXED_HEADER = "X-Indexed-Block"
CACHE_HEADER = "X-Cache"


def finality_rule(view: Any) -> Callable[[int], Finality]:
    """How sure the indexer is of a fact from a given block, from its view of the chain (the
    checkpoint row's safe and finalized blocks); built once per request, applied per item."""
    finalized = safe = -1
    if view is not None:
        if view["finalized_block"] is not None:
            finalized = int(view["finalized_block"])
        if view["safe_block"] is not None:
            safe = int(view["safe_block"])

    def finality(block: int) -> Finality:
        if block <= finalized:
            return "finalized"
        return "safe" if block <= safe else "unsafe"

    return finality


def finality_of(block: int, view: Any) -> Finality:
    """`finality_rule` for a single fact."""
    return finality_rule(view)(block)


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
