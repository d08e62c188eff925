"""The mint queue worker: sends queued requests and tracks every sent one until it is final.

Sending: lock a batch of queued requests (`FOR UPDATE SKIP LOCKED`), estimate each mint (a
revert fails the request, no nonce used), then in the same transaction allocate consecutive
nonces, sign and record every transaction; commit; only then broadcast, in nonce order,
without waiting for receipts. Tracking (`track`): one pass decides every open mint's next step
(`minter.tracking`), commits all status changes in one transaction, then broadcasts what must
go out again (fee-bumped replacements, transactions a reorg dropped) and fills any nonce the
node lost, so no later transaction is stuck behind a gap.

Everything writes through one connection, the one holding the signer's advisory lock
(`minter.service`): a minter that lost the lock has lost the connection, and cannot write.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from chain.errors import RpcRevert
from chain.signer import Signer
from discograph.encoding import hex0x_or_none, parse_address
from minter import metrics
from minter.calls import mint_call, unsigned_tx
from minter.fees import MAX_FEE_MULTIPLE, Fees, bumped_fees, gas_limit
from minter.node import Node, Sent
from minter.nonces import (
    allocate_nonces,
    count_gaps,
    next_nonce,
    recorded_nonces,
    send_again,
)
from minter.reasons import revert_reason
from minter.tracking import OpenMint, blocks_to_check, hashes_to_check, plan_tracking
from minter.transitions import (
    Failure,
    SignedTx,
    lock_albums,
    open_mints,
    record_advanced,
    record_failures,
    record_mined,
    record_reorged,
    record_replacements,
    record_sent,
    record_settled,
    take_queued,
)

log = logging.getLogger("discograph.minter")
GAP_FILLER_GAS = 21_000  # a plain value transfer


@dataclass(frozen=True)
class MinterConfig:
    chain_id: int
    contract: bytes  # the AlbumNFT the minter sends to (20 bytes)
    confirmations: int
    replace_after: float  # seconds without a receipt before a fee-bumped replacement
    fee_cap: float = MAX_FEE_MULTIPLE  # replacements bid at most this many times the market
    batch_size: int = 25  # queued requests taken (and committed) together
    estimate_concurrency: int = 8


def report(rows: Sequence[Any]) -> None:
    """After a commit: one log line and one count per status change."""
    for row in rows:
        metrics.MINT_TRANSITIONS.labels(from_status=row["previous"], to_status=row["status"]).inc()
        log.info(
            "mint %s",
            row["status"] if row["status"] != row["previous"] else "replaced",
            extra={
                "mint_id": str(row["id"]),
                "previous": row["previous"],
                "nonce": row["nonce"],
                "tx_hash": hex0x_or_none(row["tx_hash"]),
                "block": row["block_number"],
                "token_id": row["token_id"],
                "error": row["error"],
            },
        )


class Minter:
    """Sends and tracks mints for one signer, through the connection holding its lock."""

    def __init__(
        self, conn: asyncpg.Connection, node: Node, signer: Signer, config: MinterConfig
    ) -> None:
        self.conn = conn
        self.node = node
        self.signer = signer
        self.address = parse_address(signer.address)
        self.config = config

    def _sign(
        self, mint_id: uuid.UUID, call: dict[str, Any], nonce: int, gas: int, fees: Fees
    ) -> SignedTx:
        raw, tx_hash = self.signer.sign_transaction(
            unsigned_tx(self.config.chain_id, call, nonce, gas, fees)
        )
        return SignedTx(
            mint_id, nonce, bytes.fromhex(tx_hash[2:]), bytes.fromhex(raw[2:]), fees, gas
        )

    # --- sending ---------------------------------------------------------------------------------

    async def submit_queued(self) -> int:
        """Send every queued request, a batch at a time; returns how many were taken."""
        taken = 0
        while True:
            count = await self._submit_batch()
            taken += count
            if count < self.config.batch_size:
                return taken

    async def _estimate(self, calls: list[dict[str, Any]]) -> list[int | str]:
        """Gas limit of each call, or the revert reason of those that would revert."""
        limit = asyncio.Semaphore(self.config.estimate_concurrency)

        async def one(call: dict[str, Any]) -> int | str:
            async with limit:
                try:
                    return gas_limit(await self.node.estimate_gas(call))
                except RpcRevert as error:
                    return revert_reason(error)

        # gather, not a TaskGroup: a node error must reach the pass's `except ChainError` as
        # itself (a TaskGroup wraps it in an ExceptionGroup, which would stop the minter).
        outcomes = await asyncio.gather(*(one(call) for call in calls), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]

    async def _submit_batch(self) -> int:
        contract = self.config.contract
        # Fees and the node's pending count before the transaction: no node call may run while
        # it holds the outbox lock (every other outbox writer would wait on the node).
        market = await self.node.market()
        async with self.conn.transaction():
            rows = await take_queued(self.conn, self.config.batch_size)
            if not rows:
                return 0
            await lock_albums(self.conn, [row["album_id"] for row in rows])
            calls = [
                mint_call(contract, bytes(r["to_address"]), r["album_id"], r["token_uri"])
                for r in rows
            ]
            estimates = await self._estimate(calls)
            failures = [
                Failure(row["id"], "queued", outcome)
                for row, outcome in zip(rows, estimates, strict=True)
                if isinstance(outcome, str)
            ]
            ready = [
                (row["id"], call, outcome)
                for row, call, outcome in zip(rows, calls, estimates, strict=True)
                if isinstance(outcome, int)
            ]
            changed = (
                await record_failures(self.conn, self.config.chain_id, failures) if failures else []
            )
            signed: list[SignedTx] = []
            if ready:
                first = await allocate_nonces(
                    self.conn, self.config.chain_id, self.address, len(ready), market.pending_count
                )
                signed = [
                    self._sign(mint_id, call, first + i, gas, market.fees)
                    for i, (mint_id, call, gas) in enumerate(ready)
                ]
                changed += await record_sent(
                    self.conn, self.config.chain_id, contract, self.address, signed
                )
        report(changed)
        metrics.TXS_SIGNED.labels(kind="first").inc(len(signed))
        for tx in signed:  # recorded and committed: now they may go out, in nonce order
            await self.node.broadcast(tx.raw_tx)
        return len(rows)

    # --- tracking --------------------------------------------------------------------------------

    async def track(self) -> None:
        """One pass over every open mint of this signer."""
        view = await self.node.view(self.config.confirmations)
        mints = [OpenMint.from_row(row) for row in await open_mints(self.conn, self.address)]
        receipts = await self.node.receipts(hashes_to_check(mints)) if mints else {}
        canonical = await self.node.block_hashes(blocks_to_check(mints)) if mints else {}
        plan = plan_tracking(
            mints,
            receipts,
            canonical,
            view,
            confirmations=self.config.confirmations,
            replace_after=self.config.replace_after,
        )
        failures = [
            Failure(
                mint.id,
                "submitted",
                await self.node.revert_reason(
                    mint_call(mint.contract, mint.to_address, mint.album_id, mint.token_uri),
                    mined.block_number,
                ),
                mined.tx_hash,
                mined.block_number,
                mined.block_hash,
            )
            for mint, mined in plan.reverted
        ]
        failures += await self._nonces_used_elsewhere(plan.nonce_used, view.finalized)
        replacements = await self._replacements(plan.replace)
        chain_id = self.config.chain_id
        album_of = {mint.id: mint.album_id for mint in mints}
        touched = [album_of[f.mint_id] for f in failures] + [album_of[m] for m in plan.finalize]
        touched += [m.album_id for m in plan.reorged if m.status == "failed"]
        touched += [album_of[m] for m in plan.settle]
        async with self.conn.transaction():
            await lock_albums(self.conn, touched)  # albums first: see transitions.lock_albums
            changed = await record_mined(self.conn, chain_id, plan.mined) if plan.mined else []
            if failures:
                changed += await record_failures(self.conn, chain_id, failures)
            reorged = []
            if plan.reorged:
                reorged = await record_reorged(
                    self.conn, chain_id, [(m.id, m.status) for m in plan.reorged]
                )
                changed += reorged
            if plan.confirm:
                changed += await record_advanced(
                    self.conn, chain_id, plan.confirm, "mined", "confirmed"
                )
            if plan.finalize:
                changed += await record_advanced(
                    self.conn, chain_id, plan.finalize, "confirmed", "finalized"
                )
            settled = await record_settled(self.conn, plan.settle) if plan.settle else []
            replaced = []
            if replacements:
                replaced = await record_replacements(self.conn, chain_id, replacements)
                changed += replaced
        report(changed)
        for row in settled:
            log.info(
                "mint failure final",
                extra={"mint_id": str(row["id"]), "block": row["block_number"]},
            )
        # Only what the database took: a row that moved meanwhile keeps its transaction.
        resend = {row["id"] for row in reorged}
        bumped = {row["id"] for row in replaced}
        await self._send_after_commit(
            [m for m in plan.reorged if m.id in resend],
            [t for t in replacements if t.mint_id in bumped],
        )
        metrics.TXS_SIGNED.labels(kind="replacement").inc(len(bumped))
        metrics.INFLIGHT.set(sum(1 for m in mints if m.status != "failed"))
        await self._after_pass(view.mined_count)

    async def _nonces_used_elsewhere(
        self, suspects: Sequence[OpenMint], finalized: int
    ) -> list[Failure]:
        """Submitted mints none of whose transactions is mined, although a transaction of
        their nonce is final: another sender used the key, so this mint can never be mined."""
        if not suspects:
            return []
        final_count = await self.node.count_at(finalized)
        used = [m for m in suspects if m.nonce < final_count]
        if used:
            # Their receipts may just have become visible: look once more before failing them.
            late = await self.node.receipts(h for m in used for h in m.hashes)
            used = [m for m in used if not any(h in late for h in m.hashes)]
        return [
            Failure(
                m.id, "submitted", f"nonce {m.nonce} was used by another transaction of the key"
            )
            for m in used
        ]

    async def _replacements(self, stale: Sequence[OpenMint]) -> list[SignedTx]:
        """Same nonce, fees raised: re-signed variants of mints not mined in time."""
        if not stale:
            return []
        market = (await self.node.market()).fees
        signed = []
        for mint in stale:
            fees = bumped_fees(mint.fees, market, self.config.fee_cap)
            if fees is None:
                log.warning(
                    "not raising fees further: the mint already bids far above the market",
                    extra={"mint_id": str(mint.id), "nonce": mint.nonce},
                )
                continue
            call = mint_call(mint.contract, mint.to_address, mint.album_id, mint.token_uri)
            signed.append(self._sign(mint.id, call, mint.nonce, mint.gas, fees))
        return signed

    async def _send_after_commit(
        self, reorged: Sequence[OpenMint], replacements: Sequence[SignedTx]
    ) -> None:
        outgoing = [(m.nonce, m.raw_tx, "reorg") for m in reorged]
        outgoing += [(t.nonce, t.raw_tx, "replacement") for t in replacements]
        for _, raw_tx, reason in sorted(outgoing, key=lambda item: item[0]):
            outcome = await self.node.broadcast(raw_tx)
            if reason == "reorg":
                metrics.REBROADCASTS.labels(reason=reason).inc()
            elif outcome is Sent.UNDERPRICED:
                log.warning("replacement refused as underpriced; bidding again later")

    async def _after_pass(self, mined_count: int) -> None:
        """Fill any nonce the node lost (so later ones are not stuck); count the gaps left."""
        ours = await next_nonce(self.conn, self.config.chain_id, self.address)
        if ours is None:
            return
        pending = await self.node.pending_count()
        if pending < ours:
            await send_again(self.conn, self.node, self.address, pending, "lost")
            await self._fill_foreign_gap(pending)
        metrics.NONCE_GAPS.set(await count_gaps(self.conn, self.address, mined_count, ours))

    async def _fill_foreign_gap(self, pending: int) -> None:
        """The node has nothing at nonce `pending` and we never used it: another sender of the
        key took it (its transaction made us skip ahead) and that transaction was dropped.
        Later mints would wait behind the hole for ever, so fill it: a 0-value transfer to
        ourselves. Only a nonce with no recorded transaction of ours is filled, so a mint is
        never displaced; if the other transaction comes back first, the filler is refused."""
        if pending in await recorded_nonces(self.conn, self.address, pending, pending + 1):
            return  # ours, and just sent again above
        market = await self.node.market()
        fees = Fees(market.fees.max_fee * 2, market.fees.priority * 2)
        filler = {"to": self.signer.address, "data": "0x"}
        raw, tx_hash = self.signer.sign_transaction(
            unsigned_tx(self.config.chain_id, filler, pending, GAP_FILLER_GAS, fees)
        )
        log.warning(
            "filling a nonce another sender of the key left empty",
            extra={"nonce": pending, "tx_hash": tx_hash},
        )
        await self.node.broadcast(bytes.fromhex(raw[2:]))
        metrics.GAPS_FILLED.inc()
