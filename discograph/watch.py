"""`discograph watch`: the websocket feed in the terminal, one line a message, resuming by
itself after a disconnect (from the last cursor it saw, so nothing is missed or repeated).

Exit codes: 0 after `max_messages` events or when `stop` is set (or the reader of our output
went away), 1 when the cursor is older than the retained feed (4410: re-sync, retrying cannot
help), 2 when the server refuses the request itself (4400 bad filter or cursor, 4001/4003 token
refused, an HTTP 4xx to the handshake). Every other close (1001 restart, 1013 database down,
4008 slow consumer, 4029 too many connections, 4408 idle, a dropped connection, a server that
is not up yet) means: reconnect with backoff, `since` the last cursor seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO
from urllib.parse import urlencode, urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import ClientConnection, connect

BACKOFF_FIRST = 0.2  # seconds before the first reconnect; doubles up to BACKOFF_MAX
BACKOFF_MAX = 5.0
# The server closes a connection that sent nothing for WS_IDLE_TIMEOUT (120 s). Our pongs to
# its heartbeats (every WS_HEARTBEAT, 20 s) keep us clear of that; a ping of our own after 30 s
# of silence also covers a server whose heartbeat interval is longer than its idle timeout.
KEEPALIVE = 30.0
# Close codes after which reconnecting cannot help, and the exit code each gives.
FATAL = {4400: 2, 4001: 2, 4003: 2, 1009: 2, 4410: 1}
EVENT_TYPES = ("transfer", "mint", "metadata", "removed", "mint_status", "finalized")
PONG = '{"type":"pong"}'
PING = '{"type":"ping"}'


def feed_url(base: str, since: str | None, filters: Mapping[str, str | None]) -> str:
    """`ws(s)://host/ws/events?…` from an http(s) or ws(s) base URL."""
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"--url must be an http(s):// or ws(s):// URL, not {base!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/ws/events"):
        path += "/ws/events"
    query = {k: str(v) for k, v in filters.items() if v is not None}
    if since is not None:
        query["since"] = str(since)
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


def _short(value: Any, keep: int = 8) -> str:
    """`0x5FbDB2…`: enough of an address or hash to tell them apart on a screen."""
    text = str(value)
    return text if len(text) <= keep + 2 else text[:keep] + "…"


def _fact(kind: str, message: Mapping[str, Any]) -> str:
    """The line of a chain event (transfer, mint, metadata; a removed one as it was)."""
    line = f"{kind:<11} block {message.get('block_number')} #{message.get('log_index')}"
    if message.get("from") is not None or message.get("to") is not None:
        line += f"  {_short(message.get('from'))}→{_short(message.get('to'))}"
    line += f"  token {message.get('token_id')}  contract {_short(message.get('contract'))}"
    if message.get("album_id"):
        line += f"  album {message['album_id']}"
    if message.get("uri"):
        line += f"  uri {message['uri']}"
    return line


def describe(message: Mapping[str, Any]) -> str:
    """One human line for a feed message, its cursor first."""
    kind = str(message.get("type", "?"))
    cursor = message.get("cursor", "")
    if kind == "removed":
        return f"REMOVED {cursor} {_fact(str(message.get('removed_type', '?')), message)}"
    if kind == "finalized":
        block, block_hash = message.get("block_number"), _short(message.get("block_hash"), 10)
        return f"{cursor} finalized up to block {block} ({block_hash})"
    if kind == "mint_status":
        line = f"{cursor} mint_status {message.get('status')}  mint {message.get('mint_id')}"
        for key, label in (("album_id", "album"), ("to", "to"), ("tx_hash", "tx")):
            if message.get(key):
                line += f"  {label} {_short(message[key], 10)}"
        for key in ("block_number", "token_id", "error"):
            if message.get(key) is not None:
                line += f"  {key.split('_')[0]} {message[key]}"
        return line
    if kind == "heartbeat":
        return f"{cursor} heartbeat"
    return f"{cursor} {_fact(kind, message)}"


class _OutputClosed(Exception):
    """Whoever reads our output went away (`discograph watch | head`)."""


class _Watcher:
    """What survives reconnects: the cursor, the count, where lines go."""

    def __init__(
        self,
        output: TextIO,
        errors: TextIO,
        *,
        cursor: str | None,
        json_lines: bool,
        verbose: bool,
        max_messages: int | None,
    ) -> None:
        self.output = output
        self.errors = errors
        self.cursor = cursor
        self.json_lines = json_lines
        self.verbose = verbose
        self.max_messages = max_messages
        self.events = 0
        self.frames = 0  # frames received over all connections

    def write(self, line: str) -> None:
        try:
            print(line, file=self.output, flush=True)
        except BrokenPipeError:
            raise _OutputClosed from None

    def note(self, line: str) -> None:
        print(line, file=self.errors, flush=True)

    @property
    def done(self) -> bool:
        return self.max_messages is not None and self.events >= self.max_messages

    async def read(self, ws: ClientConnection) -> None:
        """Print what arrives until the connection ends or enough events were printed."""
        last_sent = time.monotonic()
        async for frame in ws:
            self.frames += 1
            for line in str(frame).split("\n"):
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except ValueError:
                    self.note(f"not a feed message (skipped): {line[:200]}")
                    continue
                kind = message.get("type")
                if message.get("cursor") is not None:
                    self.cursor = str(message["cursor"])
                if kind == "live":
                    whom = ", authenticated" if message.get("authenticated") else ""
                    self.note(f"live from cursor {self.cursor}{whom}")
                    continue
                if kind == "heartbeat":
                    await ws.send(PONG)
                    last_sent = time.monotonic()
                    if self.verbose:
                        self.write(line if self.json_lines else describe(message))
                    continue
                self.write(line if self.json_lines else describe(message))
                if kind in EVENT_TYPES:
                    self.events += 1
                    if self.done:
                        return
            if time.monotonic() - last_sent > KEEPALIVE:
                await ws.send(PING)
                last_sent = time.monotonic()

    async def session(self, url: str, headers: dict[str, str], stop: asyncio.Event) -> str:
        """One connection: '' when done or stopped, else why it ended (for the notice)."""
        async with connect(
            url, additional_headers=headers, max_size=64 * 2**20, close_timeout=2
        ) as ws:
            reading = asyncio.ensure_future(self.read(ws))
            stopping = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:  # Ctrl-C: a normal close, not the 1011 of an error
                with contextlib.suppress(Exception):
                    await ws.close()
                raise
            finally:
                stopping.cancel()
                if not reading.done():
                    reading.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reading
            if reading.cancelled():
                return ""  # stopped
            reading.result()  # a ConnectionClosed or _OutputClosed propagates
            if self.done or stop.is_set():
                return ""
        # `async for` ends quietly on a 1000/1001 close (other codes raise ConnectionClosed).
        return f"closed ({ws.close_code}: {ws.close_reason or ''})"


def _handshake_refused(exc: Exception) -> int | None:
    """The HTTP status of a refused handshake when retrying cannot help (a wrong URL, …)."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int) and 400 <= status < 500 and status not in (408, 425, 429):
        return status
    return None


async def watch(
    url: str,
    *,
    since: str | None = None,
    filters: Mapping[str, str | None] | None = None,
    token: str | None = None,
    output: TextIO | None = None,
    json_lines: bool = False,
    max_messages: int | None = None,
    stop: asyncio.Event | None = None,
    verbose: bool = False,
    errors: TextIO | None = None,
) -> int:
    """Print the feed at `url` (the API's base URL) until `max_messages` events were printed,
    `stop` is set, or the server refuses us for good; the exit code. Reconnects by itself."""
    watcher = _Watcher(
        output if output is not None else sys.stdout,
        errors if errors is not None else sys.stderr,
        cursor=since,
        json_lines=json_lines,
        verbose=verbose,
        max_messages=max_messages,
    )
    if watcher.done:
        return 0
    stop = stop if stop is not None else asyncio.Event()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    feed_url(url, since, filters or {})  # a bad URL is a ValueError now, not a retry loop
    delay = BACKOFF_FIRST
    while not stop.is_set():
        frames = watcher.frames
        try:
            why = await watcher.session(feed_url(url, watcher.cursor, filters or {}), headers, stop)
            if not why:
                return 0
        except _OutputClosed:
            _detach(watcher.output)
            return 0
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            reason = exc.rcvd.reason if exc.rcvd is not None else ""
            if code in FATAL:
                watcher.note(f"feed closed the connection ({code}): {reason}")
                return FATAL[code]
            if code == 4008:
                watcher.cursor = _later(watcher.cursor, reason.rpartition("since=")[2].strip())
            why = f"closed ({code}: {reason})" if code is not None else "connection lost"
        except websockets.InvalidStatus as exc:
            status = _handshake_refused(exc)
            if status is not None:
                watcher.note(f"the server refused the websocket (HTTP {status}): is {url} the API?")
                return 2
            why = f"unavailable ({exc})"
        except (OSError, websockets.InvalidHandshake) as exc:  # TimeoutError is an OSError
            why = f"unreachable ({str(exc) or type(exc).__name__})"
        if watcher.frames != frames:
            delay = BACKOFF_FIRST  # that connection streamed: this outage starts afresh
        wait = min(BACKOFF_MAX, delay) * random.uniform(0.5, 1.0)  # noqa: S311
        watcher.note(f"feed {why}; reconnecting in {wait:.1f} s from cursor {watcher.cursor}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)
        delay = min(BACKOFF_MAX, delay * 2)
    return 0


def _later(cursor: str | None, other: str) -> str | None:
    """The later of two cursors (4008 names the server's position, past filtered rows)."""
    if not other.isdigit():
        return cursor
    if cursor is None or not cursor.isdigit() or int(other) > int(cursor):
        return other
    return cursor


def _detach(output: TextIO) -> None:
    """Point a closed pipe's descriptor at /dev/null: the exit flush must not fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, output.fileno())
        os.close(devnull)
