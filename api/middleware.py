"""Before any route (and before the response cache): the chain version, and `?min_block`.

It runs ahead of Litestar's response cache, so cache hits too carry `X-Indexed-Block` and
honour `?min_block` (read-your-writes). The version is read from the checkpoint row on every
request (one primary-key lookup, shared by concurrent requests through `CheckpointReads`): once
the indexer has committed a block, no request — on any replica — uses a cache key of an older
version, so no answer older than that commit is served.

With a read replica (`READ_DATABASE_URL`), `checkpoints` and `indexed` both read the replica's
checkpoint row, which it replays in the same transaction as the rows it describes: the version,
`?min_block` and X-Indexed-Block never claim a block the replica has not replayed yet.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.middleware import ASGIMiddleware
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE
from litestar.types import ASGIApp, Receive, Scope, Send

from api import params
from api.state import UNSTAMPED
from db.engine import DB_ERRORS

MIN_BLOCK_WAIT = 5.0  # seconds a `?min_block` read may wait for the indexer


def _min_block(scope: Scope) -> int | None:
    """`?min_block`, parsed as the routes parse their parameters (percent-decoded, once)."""
    values = ASGIConnection[Any, Any, Any, Any](scope).query_params.getall("min_block", [])
    if not values:
        return None
    if len(values) > 1:
        raise params.invalid("min_block", "given more than once")
    return params.block_number("min_block", values[0])


def version_of(view: asyncpg.Record | None) -> str:
    """Block, hash and rollback generation: equal on every replica for the same commit, and
    never reused after the chain went back (a reorg returns to an ancestor's block and hash)."""
    if view is None:
        return "empty"
    return f"{view['block_number']}:{bytes(view['block_hash']).hex()[:16]}:{view['rollbacks']}"


_DATABASE_DOWN = DB_ERRORS


def _block(view: asyncpg.Record | None) -> int:
    return int(view["block_number"]) if view is not None else -1


async def _checkpoint(app_state: Any) -> asyncpg.Record | None:
    """The checkpoint row of the database the read routes read (the replica's, if any)."""
    try:
        return await app_state.checkpoints.read()
    except _DATABASE_DOWN:
        # The replica does not answer: the primary's checkpoint keeps the routes that do not
        # read the replica working (writes, GET /mints/{id}). Read routes still fail on the
        # replica's pool, and a cached answer of the primary's version was computed from rows
        # at least that new. Without a replica the error stands (503).
        if app_state.primary_checkpoints is None:
            raise
        return await app_state.primary_checkpoints.read()


class ChainVersionMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)
    # Probes, metrics and the schema do not read chain data.
    should_bypass_for_scope = staticmethod(lambda scope: scope["path"].startswith(UNSTAMPED))

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        app_state = scope["app"].state
        view = await _checkpoint(app_state)
        state: dict[str, Any] = scope.setdefault("state", {})
        state["indexed_block"] = _block(view)  # a bad `min_block` is answered with it too
        wanted = _min_block(scope)
        if wanted is not None and _block(view) < wanted:
            # Woken by the indexer's commit notifications; the checkpoint row decides.
            deadline = time.monotonic() + MIN_BLOCK_WAIT
            while _block(view) < wanted and time.monotonic() < deadline:
                await app_state.indexed.wait_for(wanted, min(0.1, deadline - time.monotonic()))
                view = await _checkpoint(app_state)
        state["chain_view"] = view
        state["indexed_block"] = _block(view)
        state["cache_version"] = version_of(view)
        if wanted is not None and _block(view) < wanted:
            raise HTTPException(
                status_code=HTTP_503_SERVICE_UNAVAILABLE,
                detail=f"not indexed up to block {wanted} yet (indexed: {_block(view)}); retry",
                headers={"Retry-After": "1"},
                extra={"indexed_block": _block(view), "min_block": wanted},
            )
        await next_app(scope, receive, send)
