"""Per-request view of the indexer for route handlers, and the headers every read carries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope
from litestar.utils.scope.state import ScopeState

from api.schemas import Finality
from db.engine import DB_ERRORS

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


# Probes, metrics and the schema read no chain data (and a liveness probe must not need the
# database): their answers carry no X-Indexed-Block.
UNSTAMPED = ("/health", "/metrics", "/schema")


async def _indexed_block(scope: Scope) -> int | None:
    """The indexed block, for answers that no route read: Litestar answers an unknown path
    (404) or method (405) before any middleware runs. None when it cannot be read."""
    checkpoints = getattr(scope["app"].state, "checkpoints", None)
    if checkpoints is None or scope["path"].startswith(UNSTAMPED):
        return None
    try:
        view = await checkpoints.read()
    except DB_ERRORS:
        return None
    return int(view["block_number"]) if view is not None else -1


async def add_read_headers(message: Message, scope: Scope) -> None:
    """before_send hook: stamp the indexed block the answer was read at (errors included),
    and whether it came from the response cache."""
    if message["type"] != "http.response.start":
        return
    headers = MutableScopeHeaders.from_message(message)
    block = scope.get("state", {}).get("indexed_block")
    if block is None:
        block = await _indexed_block(scope)
    if block is not None:
        headers[INDEXED_HEADER] = str(block)
    if ScopeState.from_scope(scope).is_cached is True:
        headers[CACHE_HEADER] = "hit"
