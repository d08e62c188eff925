"""Helpers for indexer tests: run the real indexer, drive a real anvil, compare projections."""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from chain.abi import encode_call, load_artifact
from chain.album import album_id_to_bytes32, deploy_album_nft
from chain.rpc import RpcClient
from chain.signer import Signer
from chain.transact import build_transaction, wait_for_receipt
from discograph.settings import Settings, load_settings
from indexer.progress import Progress
from indexer.service import run_indexer
from indexer.sync import HEAD

ZERO = "0x" + "00" * 20


def indexer_settings(rpc_url: str, **extra: str) -> Settings:
    env = {
        "RPC_URL": rpc_url,
        "CONFIRMATIONS": "0",
        "POLL_INTERVAL": "0.05",
        "METRICS_PORT": "0",
        "LOG_LEVEL": "WARNING",
    }
    env.update(extra)
    return load_settings(env, env_file=None)


async def index_to_head(database_url: str, settings: Settings) -> int:
    """A fresh `discograph index --until head`, in process."""
    return await run_indexer(settings, database_url, until=HEAD, progress=Progress(io.StringIO()))


@contextlib.asynccontextmanager
async def live_indexer(database_url: str, settings: Settings) -> AsyncIterator[asyncio.Task[int]]:
    """The indexer following the chain in the background for the duration of the block."""
    task = asyncio.create_task(
        run_indexer(settings, database_url, progress=Progress(io.StringIO()))
    )
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_synced(
    database_url: str,
    rpc: RpcClient,
    *,
    timeout: float = 30.0,
    task: asyncio.Task[Any] | None = None,
) -> int:
    """Wait until the checkpoint equals the node's latest block (number and hash)."""
    deadline = time.monotonic() + timeout
    conn = await asyncpg.connect(database_url)
    try:
        while True:
            if task is not None and task.done():
                task.result()  # raise what stopped the indexer
                raise AssertionError("indexer stopped")
            latest = await rpc.call("eth_getBlockByNumber", ["latest", False])
            row = await conn.fetchrow("SELECT block_number, block_hash FROM checkpoints")
            if (
                row is not None
                and row["block_number"] == int(latest["number"], 16)
                and "0x" + bytes(row["block_hash"]).hex() == latest["hash"]
            ):
                return int(row["block_number"])
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"indexer not synced: checkpoint {row} vs head {latest['number']}"
                )
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def projection(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every chain-derived row, sorted: two databases index the same chain iff equal."""
    conn = await asyncpg.connect(database_url)
    try:
        return {
            "transfers": [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT contract, block_number, block_hash, log_index, tx_hash, from_address,"
                    " to_address, token_id FROM transfers ORDER BY block_number, log_index"
                )
            ],
            "nfts": [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT contract, token_id, owner, album_id, token_uri, minted_block,"
                    " minted_tx, updated_block, updated_block_hash, updated_log_index,"
                    " last_transfer_block, last_transfer_tx, last_transfer_from FROM nfts"
                    " ORDER BY contract, token_id"
                )
            ],
            "token_events": [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT contract, block_number, block_hash, log_index, token_id, kind,"
                    " album_id, token_uri FROM token_events ORDER BY block_number, log_index,"
                    " token_id"
                )
            ],
        }
    finally:
        await conn.close()


def projection_differences(live: dict[str, list[Any]], fresh: dict[str, list[Any]]) -> str:
    """Per table, the rows only the first projection has and the rows only the second has."""
    parts = []
    for table in live:
        only_live = sorted(set(live[table]) - set(fresh[table]), key=repr)
        only_fresh = sorted(set(fresh[table]) - set(live[table]), key=repr)
        if only_live or only_fresh:
            parts.append(f"{table}: live only {only_live[:6]}; fresh only {only_fresh[:6]}")
    return "; ".join(parts) or "same rows, another order"


async def owners_on_chain(
    rpc: RpcClient, contract: str, token_ids: Sequence[int]
) -> dict[int, str]:
    """ownerOf of each token read from the node (lowercase hex)."""
    function = load_artifact("AlbumNFT").function("ownerOf")
    answers = await rpc.batch(
        [
            ("eth_call", [{"to": contract, "data": encode_call(function, t)}, "latest"])
            for t in token_ids
        ]
    )
    return {t: "0x" + a[-40:] for t, a in zip(token_ids, answers, strict=True)}


@dataclass
class ChainDriver:
    """Sends mints and transfers of AlbumNFT tokens on anvil and remembers the owners."""

    rpc: RpcClient
    signers: list[Signer]
    rng: random.Random
    contracts: list[str] = field(default_factory=list)
    owners: dict[tuple[str, int], str] = field(default_factory=dict)
    albums: dict[tuple[str, int], uuid.UUID] = field(default_factory=dict)

    @property
    def minter(self) -> Signer:
        return self.signers[0]

    async def deploy(self, count: int) -> list[str]:
        for _ in range(count):
            address, _ = await deploy_album_nft(self.rpc, self.minter)
            self.contracts.append(address)
        return self.contracts

    def _signer(self, address: str) -> Signer:
        return next(s for s in self.signers if s.address.lower() == address.lower())

    async def _send(self, signer: Signer, to: str, data: str, gas: int = 300_000) -> dict[str, Any]:
        tx = await build_transaction(self.rpc, signer, to=to, data=data, gas=gas)
        raw, tx_hash = signer.sign_transaction(tx)
        await self.rpc.call("eth_sendRawTransaction", [raw])
        return await wait_for_receipt(self.rpc, tx_hash, timeout=20)

    async def mint(self, contract: str | None = None, to: Signer | None = None) -> tuple[str, int]:
        contract = contract or self.rng.choice(self.contracts)
        to = to or self.rng.choice(self.signers)
        album_id = uuid.UUID(int=self.rng.getrandbits(128))
        function = load_artifact("AlbumNFT").function("mintAlbum")
        data = encode_call(
            function, to.address, album_id_to_bytes32(album_id), f"ipfs://test/{album_id}.json"
        )
        receipt = await self._send(self.minter, contract, data)
        token_id = int(receipt["logs"][0]["topics"][3], 16)
        self.owners[(contract, token_id)] = to.address.lower()
        self.albums[(contract, token_id)] = album_id
        return contract, token_id

    async def transfer(self, key: tuple[str, int] | None = None, to: Signer | None = None) -> None:
        contract, token_id = key or self.rng.choice(sorted(self.owners))
        owner = self._signer(self.owners[(contract, token_id)])
        to = to or self.rng.choice(self.signers)
        function = load_artifact("AlbumNFT").function("transferFrom")
        data = encode_call(function, owner.address, to.address, token_id)
        await self._send(owner, contract, data)
        self.owners[(contract, token_id)] = to.address.lower()

    async def set_uri(self, key: tuple[str, int] | None = None) -> None:
        """A metadata change: `setTokenURI` (the contract emits ERC-4906 `MetadataUpdate`)."""
        contract, token_id = key or self.rng.choice(sorted(self.owners))
        uri = f"ipfs://test/updated/{self.rng.getrandbits(64):016x}.json"
        function = load_artifact("AlbumNFT").function("setTokenURI")
        await self._send(self.minter, contract, encode_call(function, token_id, uri))

    async def random_activity(self, operations: int, *, metadata: float = 0.0) -> None:
        """`operations` transactions (one block each on automine): mints and transfers, and a
        `metadata` share of URI changes."""
        for _ in range(operations):
            roll = self.rng.random()
            if not self.owners or roll < 0.5 * (1 - metadata):
                await self.mint()
            elif roll < 1 - metadata:
                await self.transfer()
            else:
                await self.set_uri()

    def snapshot(self) -> tuple[dict[tuple[str, int], str], dict[tuple[str, int], uuid.UUID]]:
        return dict(self.owners), dict(self.albums)

    def restore(
        self, state: tuple[dict[tuple[str, int], str], dict[tuple[str, int], uuid.UUID]]
    ) -> None:
        self.owners, self.albums = dict(state[0]), dict(state[1])
