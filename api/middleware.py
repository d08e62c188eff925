"""Before any route (and before the response cache): the chain version, and `?min_block`.

It runs ahead of Litestar's response cache, so cache hits too carry `X-Indexed-Block` and
honour `?min_block` (read-your-writes): a read waits, bounded, until the indexer is there.
"""

from __future__ import annotations

from typing import Any

from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.middleware import ASGIMiddleware
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE
from litestar.types import ASGIApp, Receive, Scope, Send

from api import params

MIN_BLOCK_WAIT = 5.0  # seconds a `?min_block` read may wait for the indexer


def _min_block(scope: Scope) -> int | None:
    query = scope.get("query_string", b"").decode("latin-1")
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == "min_block":
            return params.block_number("min_block", value)
    return None


class ChainVersionMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        indexed = scope["app"].state.indexed  # api.freshness.IndexedBlock
        wanted = _min_block(scope)
        if wanted is not None and indexed.block < wanted:
            await indexed.wait_for(wanted, MIN_BLOCK_WAIT)
        state: dict[str, Any] = scope.setdefault("state", {})
        state["indexed_block"] = indexed.block
        state["cache_version"] = indexed.version
        if wanted is not None and indexed.block < wanted:
            raise HTTPException(
                status_code=HTTP_503_SERVICE_UNAVAILABLE,
                detail=f"not indexed up to block {wanted} yet (indexed: {indexed.block}); retry",
                headers={"Retry-After": "1"},
                extra={"indexed_block": indexed.block, "min_block": wanted},
            )
        await next_app(scope, receive, send)
