"""AlbumNFT on anvil, driven only through our own chain helpers (no web3 contract objects)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from eth_abi.abi import decode as abi_decode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from chain.abi import encode_call, event_topic, load_artifact, selector
from chain.album import (
    MINTER_ROLE,
    album_id_to_bytes32,
    bytes32_to_album_id,
    call_view,
    grant_minter,
    mint_album,
    transfer_token,
)
from chain.errors import RpcError, TransactionReverted
from chain.rpc import RpcClient, to_int
from chain.signer import Signer
from chain.transact import send_transaction

ARTIFACT = load_artifact("AlbumNFT")
ZERO_ADDRESS = "0x" + "00" * 20
TRANSFER = event_topic(ARTIFACT.event("Transfer"))
METADATA_UPDATE = event_topic(ARTIFACT.event("MetadataUpdate"))
ALBUM_MINTED = event_topic(ARTIFACT.event("AlbumMinted"))
UNAUTHORIZED = keccak(text="AccessControlUnauthorizedAccount(address,bytes32)")[:4]
NONEXISTENT_TOKEN = keccak(text="ERC721NonexistentToken(uint256)")[:4]


def _abi_error(name: str) -> dict[str, Any]:
    (item,) = [e for e in ARTIFACT.abi if e.get("type") == "error" and e.get("name") == name]
    return item


def test_revert_selectors_match_the_abi() -> None:
    assert selector(_abi_error("AccessControlUnauthorizedAccount")) == UNAUTHORIZED
    assert selector(_abi_error("ERC721NonexistentToken")) == NONEXISTENT_TOKEN


def _topic_int(topic: str) -> int:
    return int(topic, 16)


def _topic_address(topic: str) -> str:
    return to_checksum_address("0x" + topic[-40:])


async def _next_token_id(rpc: RpcClient, contract: str) -> int:
    (value,) = await call_view(rpc, contract, "nextTokenId")
    return int(value)


async def _owner_of(rpc: RpcClient, contract: str, token_id: int) -> str:
    (owner,) = await call_view(rpc, contract, "ownerOf", token_id)
    return to_checksum_address(owner)


async def _token_uri(rpc: RpcClient, contract: str, token_id: int) -> str:
    (uri,) = await call_view(rpc, contract, "tokenURI", token_id)
    return str(uri)


async def _set_token_uri(
    rpc: RpcClient, signer: Signer, contract: str, token_id: int, uri: str
) -> dict[str, Any]:
    data = encode_call(ARTIFACT.function("setTokenURI"), token_id, uri)
    return await send_transaction(rpc, signer, to=contract, data=data)


def _revert_data(error: RpcError) -> bytes | None:
    """The revert bytes an RpcError carries, if the node put them in `data`."""
    data = error.data
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x"):
        return bytes.fromhex(data[2:])
    return None


async def test_minter_mints_sequential_token_ids_to_the_given_address(
    rpc: RpcClient, dev_signers: list[Signer], album_contract: str
) -> None:
    minter, fan = dev_signers[0], dev_signers[1]
    assert await _next_token_id(rpc, album_contract) == 1

    await mint_album(
        rpc, minter, album_contract, to=fan.address, album_id=uuid.uuid4(), uri="ipfs://one"
    )
    await mint_album(
        rpc, minter, album_contract, to=fan.address, album_id=uuid.uuid4(), uri="ipfs://two"
    )

    assert await _owner_of(rpc, album_contract, 1) == fan.address
    assert await _owner_of(rpc, album_contract, 2) == fan.address
    (balance,) = await call_view(rpc, album_contract, "balanceOf", fan.address)
    assert balance == 2
    (minter_balance,) = await call_view(rpc, album_contract, "balanceOf", minter.address)
    assert minter_balance == 0
    assert await _next_token_id(rpc, album_contract) == 3
    assert await _token_uri(rpc, album_contract, 1) == "ipfs://one"
    assert await _token_uri(rpc, album_contract, 2) == "ipfs://two"


async def test_mint_logs_transfer_then_metadata_update_then_album_minted(
    rpc: RpcClient, dev_signers: list[Signer], album_contract: str
) -> None:
    minter, fan = dev_signers[0], dev_signers[2]
    album_id = uuid.uuid4()
    uri = "ipfs://bafy-album/metadata.json"

    receipt = await mint_album(
        rpc, minter, album_contract, to=fan.address, album_id=album_id, uri=uri
    )

    logs = receipt["logs"]
    assert [log["topics"][0] for log in logs] == [TRANSFER, METADATA_UPDATE, ALBUM_MINTED]
    assert all(to_checksum_address(log["address"]) == album_contract for log in logs)
    assert [to_int(log["logIndex"]) for log in logs] == sorted(
        to_int(log["logIndex"]) for log in logs
    )

    transfer, metadata_update, minted = logs
    assert _topic_address(transfer["topics"][1]) == to_checksum_address(ZERO_ADDRESS)
    assert _topic_address(transfer["topics"][2]) == fan.address
    assert _topic_int(transfer["topics"][3]) == 1

    assert len(metadata_update["topics"]) == 1  # MetadataUpdate's tokenId is not indexed
    (updated_token,) = abi_decode(["uint256"], bytes.fromhex(metadata_update["data"][2:]))
    assert updated_token == 1

    assert _topic_int(minted["topics"][1]) == 1
    album_topic = bytes.fromhex(minted["topics"][2][2:])
    assert album_topic == album_id_to_bytes32(album_id)
    assert album_topic[16:] == bytes(16)  # UUID left-aligned, low 16 bytes zero
    assert bytes32_to_album_id(album_topic) == album_id
    assert _topic_address(minted["topics"][3]) == fan.address
    (logged_uri,) = abi_decode(["string"], bytes.fromhex(minted["data"][2:]))
    assert logged_uri == uri


async def test_non_minter_cannot_mint(
    rpc: RpcClient, dev_signers: list[Signer], album_contract: str
) -> None:
    outsider = dev_signers[1]
    with pytest.raises((RpcError, TransactionReverted)) as caught:
        await mint_album(
            rpc,
            outsider,
            album_contract,
            to=outsider.address,
            album_id=uuid.uuid4(),
            uri="ipfs://stolen",
        )

    assert await _next_token_id(rpc, album_contract) == 1
    (balance,) = await call_view(rpc, album_contract, "balanceOf", outsider.address)
    assert balance == 0
    if isinstance(caught.value, RpcError):
        revert = _revert_data(caught.value)
        if revert is not None:
            assert revert[:4] == UNAUTHORIZED
            account, role = abi_decode(["address", "bytes32"], revert[4:])
            assert to_checksum_address(account) == outsider.address
            assert "0x" + role.hex() == MINTER_ROLE


async def test_set_token_uri_by_minter_changes_uri_and_emits_metadata_update(
    rpc: RpcClient, dev_signers: list[Signer], album_contract: str
) -> None:
    minter, fan = dev_signers[0], dev_signers[1]
    await mint_album(
        rpc, minter, album_contract, to=fan.address, album_id=uuid.uuid4(), uri="ipfs://old"
    )

    receipt = await _set_token_uri(rpc, minter, album_contract, 1, "ipfs://new")

    assert [log["topics"][0] for log in receipt["logs"]] == [METADATA_UPDATE]
    (token_id,) = abi_decode(["uint256"], bytes.fromhex(receipt["logs"][0]["data"][2:]))
    assert token_id == 1
    assert await _token_uri(rpc, album_contract, 1) == "ipfs://new"


async def test_set_token_uri_on_nonexistent_token_reverts(
    rpc: RpcClient, dev_signers: list[Signer], album_contract: str
) -> None:
    minter = dev_signers[0]
    with pytest.raises((RpcError, TransactionReverted)) as caught:
        await _set_token_uri(rpc, minter, album_contract, 42, "ipfs://ghost")

    if isinstance(caught.value, RpcError):
        revert = _revert_data(caught.value)
        if revert is not None:
            assert revert[:4] == NONEXISTENT_TOKEN
            assert abi_decode(["uint256"], revert[4:]) == (42,)
    with pytest.raises(RpcError):
        await call_view(rpc, album_contract, "tokenURI", 42)


@pytest.mark.parametrize(
    ("interface_id", "supported"),
    [
        ("49064906", True),  # ERC-4906 metadata update
        ("80ac58cd", True),  # ERC-721
        ("5b5e139f", True),  # ERC-721 Metadata
        ("7965db0b", True),  # AccessControl
        ("01ffc9a7", True),  # ERC-165
        ("ffffffff", False),  # ERC-165 says this must be false
    ],
)
async def test_supports_interface(
    rpc: RpcClient, album_contract: str, interface_id: str, supported: bool
) -> None:
    (answer,) = await call_view(
        rpc, album_contract, "supportsInterface", bytes.fromhex(interface_id)
    )
    assert answer is supported


async def test_owner_transfer_moves_token_and_emits_transfer(
    rpc: RpcClient, dev_signers: list[Signer], album_contract: str
) -> None:
    minter, seller, buyer = dev_signers[0], dev_signers[1], dev_signers[2]
    await mint_album(
        rpc, minter, album_contract, to=seller.address, album_id=uuid.uuid4(), uri="ipfs://a"
    )

    receipt = await transfer_token(rpc, seller, album_contract, to=buyer.address, token_id=1)

    assert len(receipt["logs"]) == 1
    (log,) = receipt["logs"]
    assert log["topics"][0] == TRANSFER
    assert _topic_address(log["topics"][1]) == seller.address
    assert _topic_address(log["topics"][2]) == buyer.address
    assert _topic_int(log["topics"][3]) == 1
    assert await _owner_of(rpc, album_contract, 1) == buyer.address
    (seller_balance,) = await call_view(rpc, album_contract, "balanceOf", seller.address)
    (buyer_balance,) = await call_view(rpc, album_contract, "balanceOf", buyer.address)
    assert (seller_balance, buyer_balance) == (0, 1)


async def test_non_owner_cannot_transfer(
    rpc: RpcClient, dev_signers: list[Signer], album_contract: str
) -> None:
    minter, owner, thief = dev_signers[0], dev_signers[1], dev_signers[3]
    await mint_album(
        rpc, minter, album_contract, to=owner.address, album_id=uuid.uuid4(), uri="ipfs://a"
    )
    with pytest.raises((RpcError, TransactionReverted)):
        await transfer_token(rpc, thief, album_contract, to=thief.address, token_id=1)
    assert await _owner_of(rpc, album_contract, 1) == owner.address


async def test_granted_minter_can_mint(
    rpc: RpcClient, dev_signers: list[Signer], album_contract: str
) -> None:
    admin, second_minter, fan = dev_signers[0], dev_signers[4], dev_signers[2]
    (before,) = await call_view(
        rpc, album_contract, "hasRole", bytes.fromhex(MINTER_ROLE[2:]), second_minter.address
    )
    assert before is False

    await grant_minter(rpc, admin, album_contract, second_minter.address)

    (after,) = await call_view(
        rpc, album_contract, "hasRole", bytes.fromhex(MINTER_ROLE[2:]), second_minter.address
    )
    assert after is True
    album_id = uuid.uuid4()
    receipt = await mint_album(
        rpc, second_minter, album_contract, to=fan.address, album_id=album_id, uri="ipfs://b"
    )
    assert receipt["logs"][-1]["topics"][0] == ALBUM_MINTED
    assert bytes32_to_album_id(bytes.fromhex(receipt["logs"][-1]["topics"][2][2:])) == album_id
    assert await _owner_of(rpc, album_contract, 1) == fan.address


def test_signing_uses_the_native_secp256k1_backend() -> None:
    """eth-keys falls back to pure Python without coincurve: ~6x slower minting (bench.mint)."""
    from eth_keys.backends import get_backend

    assert type(get_backend()).__name__ == "CoinCurveECCBackend"
