"""Parsing and validation of path and query values: every bad value is a 4xx naming it."""

from __future__ import annotations

import base64
import binascii
import functools
import re
import uuid
from collections.abc import Collection, Sequence
from typing import Any

import msgspec
from litestar.datastructures import MultiDict
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


MAX_CURSOR = 256  # characters: the longest cursor issued (owner NFTs) is about 200
_CURSOR_TEXT = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_CURSOR}}}")


def encode_cursor(route: str, key: Sequence[int | str]) -> str:
    """An opaque keyset cursor: the route's tag and the sort key of the last item, as compact
    JSON in url-safe base64 without padding. The tag keeps a route from taking another route's
    cursor of the same shape; a new format gets a new tag."""
    return base64.urlsafe_b64encode(msgspec.json.encode([route, *key])).decode().rstrip("=")


@functools.cache
def _cursor_decoder(shape: tuple[type, ...]) -> msgspec.json.Decoder[Any]:
    # Typed: a nested array where a number or string belongs fails at once, never recursing.
    return msgspec.json.Decoder(tuple.__class_getitem__((str, *shape)))


def decode_cursor(value: str | None, route: str, shape: tuple[type, ...]) -> list[Any] | None:
    """The sort key of a cursor this API issued for `route`, of the route's key `shape`.

    Valid only if it is exactly what `encode_cursor` makes of the key it carries (bounded,
    url-safe base64 without padding or anything else, compact JSON, this route's tag): any
    other text, even one a lenient decoder would read as the same key, is a 400."""
    if value is None:
        return None
    if not _CURSOR_TEXT.fullmatch(value):
        raise invalid("cursor", "not a cursor this API issued", value)
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        decoded: tuple[Any, ...] = _cursor_decoder(shape).decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise invalid("cursor", "not a cursor this API issued", value) from None
    tag, key = decoded[0], list(decoded[1:])
    if tag != route:
        raise invalid("cursor", "not a cursor of this route", value)
    if any(isinstance(k, bool) for k in key) or encode_cursor(route, key) != value:
        raise invalid("cursor", "not a cursor this API issued", value)
    return key


def reject_unknown(query: MultiDict[Any], allowed: Collection[str]) -> None:
    """A 400 naming the first query parameter (of `request.query_params`) not in `allowed`, or
    given twice: each parameter is one value, and which of two a route would read is not a
    guess a client should depend on (nor the response cache, whose key sorts them)."""
    seen: set[str] = set()
    for name, _ in query.multi_items():
        # `min_block` (read-your-writes wait) is valid on every read route.
        if name not in allowed and name != "min_block":
            raise invalid(
                name[:100], f"unknown query parameter (allowed: {', '.join(sorted(allowed))})"
            )
        if name in seen:
            raise invalid(name[:100], "given more than once")
        seen.add(name)
