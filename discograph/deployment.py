"""Deploy AlbumNFT and record it for the indexer (`discograph deploy` and the dev stack)."""

from __future__ import annotations

import asyncpg

from chain.album import deploy_album_nft
from chain.rpc import RpcClient, to_int
from chain.signer import Signer
from db.contracts import record_contract
from discograph.demo import seed_demo
from discograph.errors import ConfigError
from discograph.localchain import ANVIL_CHAIN_ID, ANVIL_DEV_KEYS


async def deploy_and_record(
    rpc: RpcClient,
    pool: asyncpg.Pool,
    signer: Signer,
    chain_id: int,
    *,
    name: str = "Discograph Albums",
    symbol: str = "ALBUM",
    minter: str | None = None,
    demo: bool = False,
) -> str:
    """Deploy, grant MINTER_ROLE, insert the `contracts` row; with `demo`, seed the demo data.

    Returns the checksummed contract address.
    """
    if demo and chain_id != ANVIL_CHAIN_ID:
        raise ConfigError("demo data needs a local anvil chain (its funded dev accounts)")
    if demo and minter is not None and minter != signer.address:
        raise ConfigError("demo data is minted by the deploying key: leave --minter unset")
    address, receipt = await deploy_album_nft(rpc, signer, name=name, symbol=symbol, minter=minter)
    async with pool.acquire() as conn:
        await record_contract(
            conn, chain_id, bytes.fromhex(address[2:]), "album", to_int(receipt["blockNumber"])
        )
    if demo:
        wallets = [Signer(key) for key in ANVIL_DEV_KEYS[1:]]
        await seed_demo(pool, rpc, signer, address, wallets)
    return address
