"""NFT, owner, transfer and holder reads, with provenance and point-in-time answers.

Ownership reads (`/nfts/{c}/{id}`, `/owners/{a}/nfts`, `/contracts/{c}/holders`) answer as of
`?at_block=N` (from the transfer history) or `?finality=latest|safe|finalized`; every NFT and
transfer item says at which block (and hash) its fact was established and how final that is,
from the indexer's view of the chain (`request.state.chain_view`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import asyncpg
from litestar import Controller, Request
from litestar.exceptions import HTTPException, NotFoundException
from litestar.params import PathParameter, QueryParameter
from litestar.status_codes import HTTP_409_CONFLICT

from api import params
from api.nft_schemas import Holder, HolderPage, LastTransfer, Nft, NftPage, Transfer, TransferPage
from api.routes import read
from api.schemas import Finality
from api.state import finality_rule
from db import chain_reads
from discograph.encoding import checksum_address, hex0x

BIGINT_MAX = 2**63 - 1
FINALITIES = ("latest", "safe", "finalized")
# Accepted by every read route (the bounded read-your-writes wait of DESIGN.md).
COMMON = frozenset({"min_block"})
PAGE = COMMON | {"limit", "cursor"}
OWNERSHIP = COMMON | {"at_block", "finality"}
# Cursor tags: each list takes only the cursors it issued.
TRANSFERS, NFT_TRANSFERS, OWNER_NFTS, HOLDERS = (
    "transfers",
    "nft-transfers",
    "owner-nfts",
    "holders",
)

ContractPath = Annotated[
    str, PathParameter(description="Contract address: 0x hex, one case or EIP-55 checksummed")
]
AddressPath = Annotated[
    str, PathParameter(description="Owner address: 0x hex, one case or EIP-55 checksummed")
]
TokenPath = Annotated[str, PathParameter(description="Token id: decimal uint256")]
Limit = Annotated[int | None, QueryParameter(description="Page size, 1..200 (default 50)")]
Cursor = Annotated[
    str | None, QueryParameter(description="Opaque cursor: `next_cursor` of the previous page")
]
AtBlock = Annotated[
    int | None,
    QueryParameter(
        description="Answer as of this block (from the transfer history); 409 above "
        "the indexed block"
    ),
]
FinalityParam = Annotated[
    str | None,
    QueryParameter(
        description="latest (default), safe or finalized: answer as of that block",
        enum=list(FINALITIES),
    ),
]
ContractFilter = Annotated[
    str | None, QueryParameter(description="Only transfers of this contract")
]
AddressFilter = Annotated[
    str | None, QueryParameter(description="Only transfers from or to this address")
]
TokenFilter = Annotated[
    str | None, QueryParameter(description="Only transfers of this token id (needs contract)")
]
FromBlock = Annotated[int | None, QueryParameter(description="Only transfers at or above")]
ToBlock = Annotated[int | None, QueryParameter(description="Only transfers at or below")]


def _block(field: str, value: int | None) -> int | None:
    if value is not None and not 0 <= value <= BIGINT_MAX:
        raise params.invalid(field, "must be a block number (0 .. 2**63 - 1)", value)
    return value


def _as_of(
    request: Request[Any, Any, Any], at_block: int | None, finality: str | None
) -> int | None:
    """The block an ownership read answers as of; None = the current state (indexed head)."""
    if at_block is not None and finality is not None:
        raise params.invalid("finality", "give either at_block or finality, not both", finality)
    indexed: int = request.state.indexed_block
    view = request.state.chain_view
    if at_block is not None:
        _block("at_block", at_block)
        if at_block > indexed:
            raise HTTPException(
                status_code=HTTP_409_CONFLICT,
                detail=f"at_block {at_block} is above the indexed block",
                extra={"indexed_block": indexed if view is not None else None},
            )
        return at_block
    if finality is None or finality == "latest":
        return None
    if finality not in FINALITIES:
        raise params.invalid("finality", "must be one of latest, safe, finalized", finality)
    if view is None:
        return None
    bound = view["finalized_block"] if finality == "finalized" else view["safe_block"]
    if bound is None or bound >= indexed:
        return None  # unknown (or not yet indexed up to it): as of the indexed block
    return int(bound)


def _chain_id(request: Request[Any, Any, Any]) -> int | None:
    view = request.state.chain_view
    return int(view["chain_id"]) if view is not None else None


def _nft(row: asyncpg.Record, chain_id: int, finality: Callable[[int], Finality]) -> Nft:
    # Hot path (50 items a page): asyncpg already gives int / bytes / str, so no conversions.
    last = None
    if row["last_block"] is not None:
        last = LastTransfer(
            block_number=row["last_block"],
            tx_hash=hex0x(row["last_tx"]),
            from_=checksum_address(row["last_from"]),
            to=checksum_address(row["last_to"]),
        )
    block = row["block_number"]
    album_id = row["album_id"]
    return Nft(
        chain_id=chain_id,
        contract=checksum_address(row["contract"]),
        token_id=row["token_id"],
        owner=checksum_address(row["owner"]),
        album_id=str(album_id) if album_id is not None else None,
        token_uri=row["token_uri"],
        minted_block=row["minted_block"],
        minted_tx=hex0x(row["minted_tx"]),
        last_transfer=last,
        block_number=block,
        block_hash=hex0x(row["block_hash"]),
        finality=finality(block),
    )


def _transfer(row: asyncpg.Record, finality: Callable[[int], Finality]) -> Transfer:
    block = row["block_number"]
    return Transfer(
        chain_id=row["chain_id"],
        contract=checksum_address(row["contract"]),
        token_id=row["token_id"],
        from_=checksum_address(row["from_address"]),
        to=checksum_address(row["to_address"]),
        tx_hash=hex0x(row["tx_hash"]),
        log_index=row["log_index"],
        block_number=block,
        block_hash=hex0x(row["block_hash"]),
        finality=finality(block),
    )


def _transfer_cursor(cursor: str | None, route: str) -> tuple[int, int] | None:
    key = params.decode_cursor(cursor, route, (int, int))
    if key is None:
        return None
    if not (0 <= key[0] <= BIGINT_MAX and 0 <= key[1] < 2**31):
        raise params.invalid("cursor", "not a cursor this API issued", cursor)
    return int(key[0]), int(key[1])


def _transfer_page(rows: list[asyncpg.Record], limit: int, view: Any, route: str) -> TransferPage:
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = params.encode_cursor(
            route, [int(rows[-1]["block_number"]), int(rows[-1]["log_index"])]
        )
    finality = finality_rule(view)
    return TransferPage(items=[_transfer(r, finality) for r in rows], next_cursor=next_cursor)


def _raw_hex(value: Any, size: int, cursor: str | None) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except (TypeError, ValueError):
        raw = b""
    if len(raw) != size:
        raise params.invalid("cursor", "not a cursor this API issued", cursor)
    return raw


class NftController(Controller):
    path = "/nfts"
    tags = ["nfts"]

    @read(
        "/{contract:str}/{token_id:str}",
        cache=True,
        summary="One NFT: owner, album, token URI, mint and last transfer, with provenance",
    )
    async def nft(
        self,
        request: Request[Any, Any, Any],
        contract: ContractPath,
        token_id: TokenPath,
        at_block: AtBlock = None,
        finality: FinalityParam = None,
    ) -> Nft:
        params.reject_unknown(request.query_params, OWNERSHIP)
        where = params.address("contract", contract)
        token = str(params.token_id("token_id", token_id))
        as_of = _as_of(request, at_block, finality)
        chain_id = _chain_id(request)
        row = None
        if chain_id is not None:
            row = await chain_reads.nft(request.app.state.read_pool, chain_id, where, token, as_of)
        if row is None or chain_id is None:
            raise NotFoundException(detail=f"no token {token} of {contract} (yet)")
        return _nft(row, chain_id, finality_rule(request.state.chain_view))

    @read(
        "/{contract:str}/{token_id:str}/transfers",
        cache=True,
        summary="Transfer history of one NFT, newest first (keyset pagination)",
    )
    async def history(
        self,
        request: Request[Any, Any, Any],
        contract: ContractPath,
        token_id: TokenPath,
        limit: Limit = None,
        cursor: Cursor = None,
    ) -> TransferPage:
        params.reject_unknown(request.query_params, PAGE)
        where = params.address("contract", contract)
        token = str(params.token_id("token_id", token_id))
        size = params.limit(limit)
        before = _transfer_cursor(cursor, NFT_TRANSFERS)
        chain_id = _chain_id(request)
        if chain_id is None:
            return TransferPage(items=[], next_cursor=None)
        rows = await chain_reads.token_transfers(
            request.app.state.read_pool, chain_id, where, token, before=before, limit=size + 1
        )
        return _transfer_page(rows, size, request.state.chain_view, NFT_TRANSFERS)


class OwnerController(Controller):
    path = "/owners"
    tags = ["nfts"]

    @read(
        "/{address:str}/nfts",
        cache=True,
        summary="NFTs held by an address, by (contract, token id) (keyset pagination)",
    )
    async def owned(
        self,
        request: Request[Any, Any, Any],
        address: AddressPath,
        limit: Limit = None,
        cursor: Cursor = None,
        at_block: AtBlock = None,
        finality: FinalityParam = None,
    ) -> NftPage:
        params.reject_unknown(request.query_params, PAGE | OWNERSHIP)
        owner = params.address("address", address)
        size = params.limit(limit)
        key = params.decode_cursor(cursor, OWNER_NFTS, (str, str))
        after = None
        if key is not None:
            if not key[1].isdigit() or not key[1].isascii() or len(key[1]) > 78:
                raise params.invalid("cursor", "not a cursor this API issued", cursor)
            after = (_raw_hex(key[0], 20, cursor), key[1])
        as_of = _as_of(request, at_block, finality)
        chain_id = _chain_id(request)
        if chain_id is None:
            return NftPage(items=[], next_cursor=None)
        rows = await chain_reads.owner_nfts(
            request.app.state.read_pool,
            chain_id,
            owner,
            at_block=as_of,
            after=after,
            limit=size + 1,
        )
        next_cursor = None
        if len(rows) > size:
            rows = rows[:size]
            next_cursor = params.encode_cursor(
                OWNER_NFTS, [bytes(rows[-1]["contract"]).hex(), str(rows[-1]["token_id"])]
            )
        rule = finality_rule(request.state.chain_view)
        return NftPage(items=[_nft(r, chain_id, rule) for r in rows], next_cursor=next_cursor)


class TransferController(Controller):
    path = "/transfers"
    tags = ["transfers"]

    @read(
        cache=True,
        summary="Transfers newest first; filters contract, address (either side), token id, blocks",
    )
    async def transfers(
        self,
        request: Request[Any, Any, Any],
        contract: ContractFilter = None,
        address: AddressFilter = None,
        token_id: TokenFilter = None,
        from_block: FromBlock = None,
        to_block: ToBlock = None,
        limit: Limit = None,
        cursor: Cursor = None,
    ) -> TransferPage:
        params.reject_unknown(
            request.query_params,
            PAGE | {"contract", "address", "token_id", "from_block", "to_block"},
        )
        where = params.address("contract", contract) if contract is not None else None
        who = params.address("address", address) if address is not None else None
        token = None
        if token_id is not None:
            token = str(params.token_id("token_id", token_id))
            if where is None:
                raise params.invalid("token_id", "needs the contract filter too", token_id)
        _block("from_block", from_block)
        _block("to_block", to_block)
        size = params.limit(limit)
        before = _transfer_cursor(cursor, TRANSFERS)
        chain_id = _chain_id(request)
        if chain_id is None:
            return TransferPage(items=[], next_cursor=None)
        rows = await chain_reads.transfers(
            request.app.state.read_pool,
            chain_id,
            contract=where,
            address=who,
            token_id=token,
            from_block=from_block,
            to_block=to_block,
            before=before,
            limit=size + 1,
        )
        return _transfer_page(rows, size, request.state.chain_view, TRANSFERS)


class HolderController(Controller):
    path = "/contracts"
    tags = ["nfts"]

    @read(
        "/{contract:str}/holders",
        cache=True,
        summary="Holders of a contract with their token count, most first (keyset pagination)",
    )
    async def holders(
        self,
        request: Request[Any, Any, Any],
        contract: ContractPath,
        limit: Limit = None,
        cursor: Cursor = None,
        at_block: AtBlock = None,
        finality: FinalityParam = None,
    ) -> HolderPage:
        params.reject_unknown(request.query_params, PAGE | OWNERSHIP)
        where = params.address("contract", contract)
        size = params.limit(limit)
        # Counts change while a client pages, and they are the sort key: the cursor pins the
        # block the walk started at, so every page reads the same snapshot (no skip, no repeat).
        key = params.decode_cursor(cursor, HOLDERS, (int, str, int))
        after = None
        as_of = _as_of(request, at_block, finality)
        if key is not None:
            if not 1 <= key[0] <= BIGINT_MAX or not 0 <= key[2] <= BIGINT_MAX:
                raise params.invalid("cursor", "not a cursor this API issued", cursor)
            if key[2] > request.state.indexed_block:
                raise params.invalid("cursor", "its block is not indexed (anymore)", cursor)
            after = (int(key[0]), _raw_hex(key[1], 20, cursor))
            as_of = int(key[2])
        chain_id = _chain_id(request)
        if chain_id is None:
            return HolderPage(items=[], next_cursor=None)
        async with (
            request.app.state.read_pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            # The rows and the block they reflect come from one snapshot.
            snapshot = as_of
            if snapshot is None:
                snapshot = await conn.fetchval(
                    "SELECT block_number FROM checkpoints WHERE chain_id = $1", chain_id
                )
            rows = await chain_reads.holders(
                conn, chain_id, where, at_block=as_of, after=after, limit=size + 1
            )
        next_cursor = None
        if len(rows) > size:
            rows = rows[:size]
            next_cursor = params.encode_cursor(
                HOLDERS, [int(rows[-1]["count"]), bytes(rows[-1]["owner"]).hex(), int(snapshot)]
            )
        return HolderPage(
            items=[
                Holder(owner=checksum_address(bytes(r["owner"])), count=int(r["count"]))
                for r in rows
            ],
            next_cursor=next_cursor,
        )
