"""JSON request bodies with bounded nesting, measured before any decoder recurses into them.

msgspec decodes nested arrays and objects recursively: about 1,000 levels raise RecursionError
(a 500), and under a raised recursion limit deeper input overflows the C stack and kills the
process. So the nesting of a body is measured on its text first (C-speed passes: strip the
strings, keep the brackets, a running sum), and a body deeper than `MAX_BODY_DEPTH` is a 400
naming the top-level field it is nested under, before anything decodes it.
"""

from __future__ import annotations

import re
from array import array
from itertools import accumulate
from typing import Any

from litestar import Request
from litestar.exceptions import ValidationException

MAX_BODY_DEPTH = 32  # the body object is level 1; the write bodies need 3 (+ their metadata)

# A JSON string lexes the same way here as in any JSON decoder: from `"` to the first `"`
# not escaped by a backslash. On invalid input the decoder stops at the first bad token,
# and up to it both agree, so the depth measured bounds the depth the decoder reaches.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_KEPT = b"[]{}"
_DROP = bytes(b for b in range(256) if b not in _KEPT)
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 / -1 as signed bytes
_TOKENS = re.compile(rb'"((?:[^"\\]|\\.)*)"\s*(:)?|[\[{]|[\]}]', re.DOTALL)


def json_depth(text: bytes) -> int:
    """How deep arrays and objects nest in `text` (0 for a scalar)."""
    if text.count(b"[") + text.count(b"{") <= 1:
        return min(1, text.count(b"[") + text.count(b"{"))
    brackets = _STRING.sub(b"", text).translate(None, _DROP)
    steps = array("b", brackets.translate(_STEPS))
    return max(accumulate(steps), default=0)


def too_deep_under(text: bytes, limit: int) -> str:
    """The top-level key under which `text` nests deeper than `limit` ("body" if none).
    Only called on refused bodies: a token scan, stopped at the first level too deep."""
    depth = 0
    key = "body"
    for match in _TOKENS.finditer(text):
        token = match.group(0)
        if token[:1] == b'"':
            if depth == 1 and match.group(2):
                key = match.group(1).decode("utf-8", "replace")[:100] or "body"
        elif token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return key
        else:
            depth -= 1
    return key


def check_depth(text: bytes, limit: int = MAX_BODY_DEPTH) -> None:
    """A 400 naming the field when `text` nests deeper than `limit`."""
    if json_depth(text) > limit:
        field = too_deep_under(text, limit)
        message = f"nested deeper than {limit} levels of arrays and objects"
        raise ValidationException(
            detail=f"Invalid {field}: {message}",
            extra=[{"key": field, "message": message, "source": "body"}],
        )


class BoundedJsonRequest(Request[Any, Any, Any]):
    """Litestar's request, whose JSON body is checked for nesting before it is decoded."""

    async def json(self) -> Any:
        check_depth(await self.body())
        return await super().json()
