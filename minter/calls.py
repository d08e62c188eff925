"""The mint transaction: mintAlbum's calldata and the unsigned EIP-1559 transaction around it."""

from __future__ import annotations

import uuid
from typing import Any

from chain.abi import encode_call, load_artifact
from chain.album import album_id_to_bytes32
from discograph.encoding import checksum_address
from minter.fees import Fees

MINT_ALBUM = load_artifact("AlbumNFT").function("mintAlbum")


def mint_call(contract: bytes, to_address: bytes, album_id: uuid.UUID, uri: str) -> dict[str, Any]:
    """`to` and `data` of mintAlbum(to, albumId, uri)."""
    data = encode_call(MINT_ALBUM, checksum_address(to_address), album_id_to_bytes32(album_id), uri)
    return {"to": checksum_address(contract), "data": data}


def unsigned_tx(
    chain_id: int, call: dict[str, Any], nonce: int, gas: int, fees: Fees
) -> dict[str, Any]:
    return {
        "type": 2,
        "chainId": chain_id,
        "nonce": nonce,
        "gas": gas,
        "maxFeePerGas": fees.max_fee,
        "maxPriorityFeePerGas": fees.priority,
        "value": 0,
        "data": call["data"],
        "to": call["to"],
    }
