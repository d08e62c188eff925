"""Wire types of the API (msgspec structs; uint256 as decimal strings, addresses EIP-55)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

Finality = Annotated[
    Literal["unsafe", "safe", "finalized"],
    msgspec.Meta(
        description="How sure the fact is: its block is finalized, safe, or above the safe block"
    ),
]
Address = Annotated[
    str,
    msgspec.Meta(
        description="EIP-55 checksummed address",
        examples=["0x70997970C51812dc3A010C7d01b50e0d17dc79C8"],
    ),
]
TokenId = Annotated[str, msgspec.Meta(description="uint256 as a decimal string", examples=["42"])]
Hash = Annotated[
    str,
    msgspec.Meta(
        description="32-byte hash, 0x-prefixed lowercase hex",
        examples=["0x89b3bcc1ce9fe33260bcea5e844a89945f9771a760cf13b6d635ca9018e98adf"],
    ),
]
BlockNumber = Annotated[int, msgspec.Meta(ge=0, description="Block number", examples=[1234])]
Cursor = Annotated[
    str | None,
    msgspec.Meta(description="Opaque cursor of the next page (pass as ?cursor=); null at the end"),
]


class ContractInfo(msgspec.Struct, frozen=True):
    chain_id: int
    address: str
    kind: str
    start_block: int


class LastReorg(msgspec.Struct, frozen=True):
    depth: int
    block: int
    at: datetime


class LastAudit(msgspec.Struct, frozen=True):
    """The newest `discograph audit` of the chain: the projection compared with the node at a
    finalized block (`differences` 0: they matched)."""

    at: datetime
    finalized_block: int
    tokens: int
    differences: int
    seconds: float


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
    last_audit: LastAudit | None = None


class Health(msgspec.Struct, frozen=True):
    status: Literal["ok", "degraded", "unavailable"]
    database: bool
    indexed_block: int | None = None
    lag_blocks: int | None = None
    detail: str | None = None
