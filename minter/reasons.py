"""Readable revert reasons: `Error(string)`, `Panic(uint256)` and AlbumNFT's custom errors."""

from __future__ import annotations

import functools
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError

from chain.abi import load_artifact, signature
from chain.errors import RpcError
from discograph.encoding import keccak_text

ERROR_STRING = bytes.fromhex("08c379a0")  # Error(string)
PANIC = bytes.fromhex("4e487b71")  # Panic(uint256)
FALLBACK = "reverted"
MAX_REASON = 500  # characters kept in mint_requests.error


@functools.cache
def _custom_errors() -> dict[bytes, tuple[str, list[str]]]:
    """selector → (name, argument types) of every `error` in the AlbumNFT ABI."""
    errors: dict[bytes, tuple[str, list[str]]] = {}
    for item in load_artifact("AlbumNFT").abi:
        if item.get("type") == "error":
            types = [str(arg["type"]) for arg in item["inputs"]]
            errors[keccak_text(signature(item))[:4]] = (str(item["name"]), types)
    return errors


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


def decode_revert_data(data: str | None) -> str | None:
    """`Name(arg, …)` for revert data we can decode, the raw hex otherwise; None without data."""
    if not isinstance(data, str) or not data.startswith("0x") or len(data) < 10:
        return None
    try:
        raw = bytes.fromhex(data[2:])
    except ValueError:
        return None
    selector, body = raw[:4], raw[4:]
    try:
        if selector == ERROR_STRING:
            (message,) = abi_decode(["string"], body)
            return str(message)
        if selector == PANIC:
            (code,) = abi_decode(["uint256"], body)
            return f"Panic(0x{code:02x})"
        known = _custom_errors().get(selector)
        if known is not None:
            name, types = known
            values = abi_decode(types, body)
            return f"{name}({', '.join(_show(v) for v in values)})"
    except DecodingError:
        pass
    return data


def revert_reason(error: RpcError) -> str:
    """The reason a node gave for a revert: decoded data first, then its message."""
    decoded = decode_revert_data(error.data if isinstance(error.data, str) else None)
    reason = decoded or error.rpc_message or FALLBACK
    return reason[:MAX_REASON]
