"""Hex and address encodings shared by every package (light imports: no web3 stack).

Addresses travel as EIP-55 checksummed strings, hashes as 0x-prefixed lowercase hex, and are
stored as raw bytes (DESIGN.md / docs/schema.md).
"""

from __future__ import annotations

import functools

from eth_hash.auto import keccak as _keccak


def keccak(data: bytes) -> bytes:
    return bytes(_keccak(data))


def keccak_text(text: str) -> bytes:
    return keccak(text.encode())


@functools.lru_cache(maxsize=65_536)
def checksum_address(raw: bytes) -> str:
    """EIP-55 mixed-case hex of a 20-byte address (cached: holders repeat)."""
    lower = raw.hex()
    digest = keccak(lower.encode()).hex()
    # A letter is upper-cased where the digest's nibble is 8 or more ('8'..'f' >= '8').
    return "0x" + "".join(
        up if nibble >= "8" else low
        for low, up, nibble in zip(lower, lower.upper(), digest[:40], strict=True)
    )


def hex0x(raw: bytes) -> str:
    return "0x" + raw.hex()


def hex0x_or_none(raw: bytes | None) -> str | None:
    """`hex0x` of a nullable column."""
    return None if raw is None else "0x" + raw.hex()


def parse_address(value: str) -> bytes:
    """A 20-byte address from hex text: any single case, or mixed case with a valid EIP-55
    checksum. Raises ValueError saying what is wrong."""
    if not isinstance(value, str) or len(value) != 42 or value[:2] not in ("0x", "0X"):
        raise ValueError("not a 0x-prefixed 20-byte hex address")
    digits = value[2:]
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        raise ValueError("not a 0x-prefixed 20-byte hex address") from None
    if digits != digits.lower() and digits != digits.upper() and checksum_address(raw) != value:
        raise ValueError("invalid EIP-55 checksum (mixed case that is not the checksum)")
    return raw
