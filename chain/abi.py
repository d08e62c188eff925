"""Contract artifacts from `abis/` by name, and the small ABI helpers built on them."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import msgspec
from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak

from chain.errors import ChainError


class Artifact(msgspec.Struct, frozen=True):
    """A compiled contract: what `contracts/compile.js` writes to `abis/NAME.json`."""

    contractName: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployedBytecode: str
    compiler: dict[str, Any]

    def function(self, name: str) -> dict[str, Any]:
        for item in self.abi:
            if item.get("type") == "function" and item.get("name") == name:
                return item
        raise ChainError(f"{self.contractName} has no function {name}")

    def event(self, name: str) -> dict[str, Any]:
        for item in self.abi:
            if item.get("type") == "event" and item.get("name") == name:
                return item
        raise ChainError(f"{self.contractName} has no event {name}")

    def constructor_types(self) -> list[str]:
        for item in self.abi:
            if item.get("type") == "constructor":
                return [_canonical_type(arg) for arg in item["inputs"]]
        return []


@functools.cache
def load_artifact(name: str) -> Artifact:
    """Load `abis/<name>.json` (shipped as package data, so it works installed too)."""
    try:
        text = resources.files("abis").joinpath(f"{name}.json").read_text()
    except FileNotFoundError:
        raise ChainError(f"no artifact abis/{name}.json (run `make compile-contracts`)") from None
    return msgspec.convert(json.loads(text), Artifact)


def _canonical_type(arg: dict[str, Any]) -> str:
    kind = str(arg["type"])
    if kind.startswith("tuple"):
        inner = ",".join(_canonical_type(component) for component in arg["components"])
        return f"({inner}){kind[len('tuple') :]}"
    return kind


def signature(item: dict[str, Any]) -> str:
    """`name(type,type)` of an ABI function or event entry."""
    return f"{item['name']}({','.join(_canonical_type(arg) for arg in item['inputs'])})"


def selector(item: dict[str, Any]) -> bytes:
    return keccak(text=signature(item))[:4]


def event_topic(item: dict[str, Any]) -> str:
    """topic0 of an event entry as 0x-prefixed lowercase hex."""
    return "0x" + keccak(text=signature(item)).hex()


def encode_call(item: dict[str, Any], *args: Any) -> str:
    """Calldata for a function entry and its arguments, 0x-prefixed hex."""
    types = [_canonical_type(arg) for arg in item["inputs"]]
    return "0x" + (selector(item) + abi_encode(types, list(args))).hex()


def decode_result(item: dict[str, Any], data: str) -> tuple[Any, ...]:
    """Decode the return data of an `eth_call` to a function entry."""
    types = [_canonical_type(arg) for arg in item["outputs"]]
    return tuple(abi_decode(types, bytes.fromhex(data.removeprefix("0x"))))


def deploy_data(artifact: Artifact, *args: Any) -> str:
    """Creation bytecode followed by the ABI-encoded constructor arguments."""
    encoded = abi_encode(artifact.constructor_types(), list(args)) if args else b""
    return artifact.bytecode + encoded.hex()
