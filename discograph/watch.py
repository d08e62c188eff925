"""`discograph watch`: the websocket feed in the terminal, one line a message, resuming by
itself after a disconnect (from the last cursor it saw, so nothing is missed or repeated)."""

from __future__ import annotations

import asyncio
import json
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlencode, urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import connect

# Close codes after which reconnecting cannot help (README "Websocket feed").
FATAL = {1009: 2, 4001: 2, 4003: 2, 4400: 2, 4410: 1}


@dataclass
class WatchResult:
    code: int
    messages: int


def feed_url(base: str, since: str | None, filters: Mapping[str, str | None]) -> str:
    """`ws(s)://host/ws/events?…` from an http(s) or ws(s) base URL."""
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise ValueError(f"--url must be http(s):// or ws(s)://, not {base!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/ws/events"):
        path += "/ws/events"
    query = {k: v for k, v in filters.items() if v is not None}
    if since is not None:
        query["since"] = since
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


def _short(value: Any, keep: int = 10) -> str:
    text = str(value)
    return text if len(text) <= keep + 2 else text[:keep] + "…"


def describe(message: dict[str, Any]) -> str:
    """One human line for a feed message."""
    kind = message.get("type", "?")
    cursor = message.get("cursor", "")
    if kind == "finalized":
        block, block_hash = message["block_number"], _short(message["block_hash"])
        return f"{cursor:>8} finalized up to block {block} ({block_hash})"
    if kind == "mint_status":
        tx = message.get("tx_hash")
        extra = f" tx {_short(tx)}" if tx else ""
        token = message.get("token_id")
        extra += f" token {token}" if token else ""
        extra += f" error {message['error']}" if message.get("error") else ""
        return f"{cursor:>8} mint {message['mint_id']} {message['status']}{extra}"
    label = f"REMOVED {message.get('removed_type', '?')}" if kind == "removed" else kind
    line = (
        f"{cursor:>8} {label:<18} block {message.get('block_number')} #{message.get('log_index')}"
    )
    if message.get("from") or message.get("to"):
        line += f"  {_short(message.get('from'))}→{_short(message.get('to'))}"
    line += f"  token {message.get('token_id')}  contract {_short(message.get('contract'))}"
    if message.get("album_id"):
        line += f"  album {message['album_id']}"
    return line


async def watch(
    base_url: str,
    *,
    since: str | None = None,
    filters: Mapping[str, str | None] | None = None,
    token: str | None = None,
    as_json: bool = False,
    verbose: bool = False,
    max_messages: int | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> WatchResult:
    """Print the feed until `max_messages` events (or forever); reconnect with backoff."""
    cursor = since
    printed = 0
    delay = 0.2
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    while True:
        url = feed_url(base_url, cursor, filters or {})
        try:
            async with connect(url, additional_headers=headers, max_size=16 * 2**20) as ws:
                async for frame in ws:
                    delay = 0.2  # connected and receiving: the next outage starts afresh
                    for line in str(frame).splitlines():
                        message = json.loads(line)
                        cursor = message.get("cursor", cursor)
                        kind = message.get("type")
                        if kind == "heartbeat":
                            await ws.send('{"type":"pong"}')
                            if verbose:
                                print(f"(heartbeat, cursor {cursor})", file=err, flush=True)
                            continue
                        if kind == "live":
                            print(f"live from cursor {cursor}", file=err, flush=True)
                            continue
                        print(line if as_json else describe(message), file=out, flush=True)
                        printed += 1
                        if max_messages is not None and printed >= max_messages:
                            return WatchResult(0, printed)
            close = ws.close_code
            reason = ws.close_reason or ""
        except websockets.ConnectionClosed as exc:
            close = exc.rcvd.code if exc.rcvd is not None else None
            reason = exc.rcvd.reason if exc.rcvd is not None else ""
        except (OSError, websockets.InvalidHandshake, TimeoutError) as exc:
            close, reason = None, str(exc) or type(exc).__name__
        if close in FATAL:
            print(f"feed closed the connection ({close}): {reason}", file=err, flush=True)
            return WatchResult(FATAL[close], printed)
        if close == 4008 and "since=" in reason:
            cursor = reason.rsplit("since=", 1)[1].strip() or cursor
        wait = delay * random.uniform(0.5, 1.5)  # noqa: S311
        what = f"closed ({close}: {reason})" if close is not None else f"unreachable ({reason})"
        print(f"feed {what}; reconnecting in {wait:.1f} s from cursor {cursor}", file=err)
        await asyncio.sleep(wait)
        delay = min(5.0, delay * 2)
