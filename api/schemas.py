"""Wire types of the API (msgspec structs; uint256 as decimal strings, addresses EIP-55)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

Finality = Literal["unsafe", "safe", "finalized"]


class ContractInfo(msgspec.Struct, frozen=True):
    chain_id: int
    address: str
    kind: str
    start_block: int


class LastReorg(msgspec.Struct, frozen=True):
    depth: int
    block: int
    at: datetime


class Status(msgspec.Struct, frozen=True):
    chain_id: int | None
    chain_head: int | None
    indexed_block: int | None
    indexed_block_hash: str | None
    safe_block: int | None
    finalized_block: int | None
    lag_blocks: int | None
    lag_seconds: float | None
    last_reorg: LastReorg | None
    contracts: list[ContractInfo]


class Health(msgspec.Struct, frozen=True):
    status: Literal["ok", "degraded", "unavailable"]
    database: bool
    indexed_block: int | None = None
    lag_blocks: int | None = None
    detail: str | None = None
