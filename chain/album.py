"""AlbumNFT: deploy it, grant the minter role, mint, transfer, read (dev data, tests, deploy)."""

from __future__ import annotations

import uuid
from typing import Any

from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from chain.abi import decode_result, deploy_data, encode_call, load_artifact
from chain.rpc import RpcClient
from chain.signer import Signer
from chain.transact import send_transaction

ARTIFACT_NAME = "AlbumNFT"
MINTER_ROLE = "0x" + keccak(text="MINTER_ROLE").hex()


def album_id_to_bytes32(album_id: uuid.UUID) -> bytes:
    """The album's UUID as 16 bytes, left-aligned in a bytes32 (DESIGN.md)."""
    return album_id.bytes + bytes(16)


def bytes32_to_album_id(value: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=value[:16])


async def deploy_album_nft(
    rpc: RpcClient,
    signer: Signer,
    *,
    name: str = "Discograph Albums",
    symbol: str = "ALBUM",
    minter: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """Deploy AlbumNFT with `signer` as admin and grant MINTER_ROLE to `minter` (default: signer).

    Returns the checksummed contract address and the deployment receipt.
    """
    artifact = load_artifact(ARTIFACT_NAME)
    receipt = await send_transaction(
        rpc, signer, to=None, data=deploy_data(artifact, name, symbol, signer.address)
    )
    address = to_checksum_address(receipt["contractAddress"])
    await grant_minter(rpc, signer, address, minter or signer.address)
    return address, receipt


async def grant_minter(rpc: RpcClient, admin: Signer, contract: str, minter: str) -> None:
    artifact = load_artifact(ARTIFACT_NAME)
    data = encode_call(artifact.function("grantRole"), bytes.fromhex(MINTER_ROLE[2:]), minter)
    await send_transaction(rpc, admin, to=contract, data=data)


async def mint_album(
    rpc: RpcClient, signer: Signer, contract: str, *, to: str, album_id: uuid.UUID, uri: str
) -> dict[str, Any]:
    """Call `mintAlbum` directly with the minter key (the minter service does this in prod)."""
    artifact = load_artifact(ARTIFACT_NAME)
    data = encode_call(artifact.function("mintAlbum"), to, album_id_to_bytes32(album_id), uri)
    return await send_transaction(rpc, signer, to=contract, data=data)


async def transfer_token(
    rpc: RpcClient, owner: Signer, contract: str, *, to: str, token_id: int
) -> dict[str, Any]:
    artifact = load_artifact(ARTIFACT_NAME)
    data = encode_call(artifact.function("transferFrom"), owner.address, to, token_id)
    return await send_transaction(rpc, owner, to=contract, data=data)


async def call_view(
    rpc: RpcClient, contract: str, function: str, *args: Any, block: str | int = "latest"
) -> tuple[Any, ...]:
    """`eth_call` a view function of AlbumNFT (or any ERC-721 view it shares)."""
    item = load_artifact(ARTIFACT_NAME).function(function)
    tag = hex(block) if isinstance(block, int) else block
    data = await rpc.call("eth_call", [{"to": contract, "data": encode_call(item, *args)}, tag])
    return decode_result(item, data)
