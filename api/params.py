"""Parsing and validation of path and query values: every bad value is a 4xx naming it."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Collection, Iterable
from typing import Any

import msgspec
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_422_UNPROCESSABLE_ENTITY

from discograph.encoding import parse_address

UINT256_MAX = 2**256 - 1
MAX_LIMIT = 200
DEFAULT_LIMIT = 50


def invalid(field: str, message: str, value: Any = None) -> ValidationException:
    """A 400 in Litestar's error shape whose `extra` names the offending parameter."""
    extra: dict[str, Any] = {"key": field, "message": message, "source": "parameter"}
    if value is not None:
        extra["value"] = str(value)[:100]
    return ValidationException(detail=f"Invalid {field}: {message}", extra=[extra])


def address(field: str, value: str) -> bytes:
    """An address in any single case, or mixed case with a valid EIP-55 checksum."""
    try:
        return parse_address(value)
    except ValueError as exc:
        if "checksum" in str(exc):
            # Well-formed but mistyped (the EIP-55 case pattern does not match): 422.
            raise HTTPException(
                status_code=HTTP_422_UNPROCESSABLE_ENTITY,
                detail=f"Invalid {field}: {exc}",
                extra=[{"key": field, "message": str(exc), "source": "parameter"}],
            ) from None
        raise invalid(field, str(exc), value) from None


def token_id(field: str, value: str) -> int:
    """A decimal uint256 (no sign, no hex, no leading junk)."""
    if not value.isdigit() or not value.isascii() or len(value) > 78:
        raise invalid(field, "must be a decimal uint256", value)
    number = int(value)
    if number > UINT256_MAX:
        raise invalid(field, "must be at most 2**256 - 1", value)
    return number


def block_number(field: str, value: str) -> int:
    """A block number: decimal, 0 ≤ N < 2**63."""
    if not value.isascii() or not value.isdigit() or len(value) > 19 or int(value) >= 2**63:
        raise invalid(field, "must be a block number (decimal, 0 or more)", value)
    return int(value)


def album_id(field: str, value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise invalid(field, "must be a UUID", value) from None


def limit(value: int | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if not 1 <= value <= MAX_LIMIT:
        raise invalid("limit", f"must be between 1 and {MAX_LIMIT}", value)
    return value


def encode_cursor(key: list[Any]) -> str:
    """An opaque keyset cursor: the sort key of the last item, JSON in url-safe base64."""
    return base64.urlsafe_b64encode(msgspec.json.encode(key)).decode().rstrip("=")


def decode_cursor(value: str | None, shape: tuple[type, ...]) -> list[Any] | None:
    """The sort key a cursor carries, checked against the route's key `shape`."""
    if value is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        key = msgspec.json.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise invalid("cursor", "not a cursor this API issued", value) from None
    if (
        not isinstance(key, list)
        or len(key) != len(shape)
        or not all(
            isinstance(k, t) and not isinstance(k, bool) for k, t in zip(key, shape, strict=True)
        )
    ):
        raise invalid("cursor", "not a cursor this API issued", value)
    return key


def reject_unknown(query: Iterable[str], allowed: Collection[str]) -> None:
    """A 400 naming the first query parameter (of `request.query_params`) not in `allowed`."""
    for name in query:
        # `min_block` (read-your-writes wait) is valid on every read route.
        if name not in allowed and name != "min_block":
            raise invalid(
                name[:100], f"unknown query parameter (allowed: {', '.join(sorted(allowed))})"
            )
