"""One websocket connection of the feed: checks, authentication, replay, then live.

The order is what makes resuming exact: the connection subscribes to the hub first (from then
on every new row reaches its queue), replays from Postgres what lies between its `since` and
the hub's position at that moment, then sends what queued meanwhile. Replay and queue never
overlap (replay stops at that position, the queue starts after it), so there is no gap and no
duplicate whatever the indexer does meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from litestar import WebSocket
from litestar.exceptions import WebSocketDisconnect

from api.auth import Principal, TokenRefused, bearer_token
from api.feed import metrics
from api.feed.hub import Subscriber, outbox_items
from api.feed.messages import (
    CLOSE_BAD_REQUEST,
    CLOSE_CURSOR_GONE,
    CLOSE_FORBIDDEN,
    CLOSE_IDLE,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOO_BIG,
    CLOSE_TRY_LATER,
    CLOSE_UNAUTHENTICATED,
    Auth,
    BadRequest,
    Filters,
    Heartbeat,
    Live,
    control,
    parse_client_message,
    parse_query,
)
from db.engine import DB_ERRORS
from db.outbox import outbox_bounds

if TYPE_CHECKING:
    from api.feed.service import Feed

log = logging.getLogger("discograph.feed")
REPLAY_PAGE = 500
FRAME_BYTES = 256 * 1024  # queued frames are joined up to this size per websocket frame


class Close(Exception):
    """End the connection with this close code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ClientGone(Exception):
    """The client disconnected."""


class Connection:
    def __init__(self, feed: Feed, socket: WebSocket[Any, Any, Any]) -> None:
        self.feed = feed
        self.socket = socket
        self.settings = feed.settings
        self.position = 0  # seq of the last row handed to the socket or filtered out
        self.closing: asyncio.Future[Close] = asyncio.get_running_loop().create_future()
        self._closed = False
        self._last_heartbeat = 0.0

    def close_with(self, code: int, reason: str) -> None:
        if not self.closing.done():
            self.closing.set_result(Close(code, reason))

    async def serve(self) -> None:
        await self.socket.accept()
        try:
            await self._serve()
        except Close as close:
            self.close_with(close.code, close.reason)
        except (ClientGone, WebSocketDisconnect):
            return
        await self._close_socket()

    async def _close_socket(self) -> None:
        """Send the decided close frame, once."""
        if not self.closing.done() or self._closed:
            return
        self._closed = True
        close = self.closing.result()
        metrics.CLOSES.labels(str(close.code)).inc()
        if close.code == CLOSE_SLOW_CONSUMER:
            metrics.SLOW_CONSUMER_CLOSES.inc()
        reason = close.reason.encode()[:123].decode(errors="ignore")
        # Bounded: behind a client that reads nothing the close frame waits for buffer room
        # like any frame; uvicorn's keep-alive ping ends such a connection anyway.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.socket.close(code=close.code, reason=reason), 10)

    async def _serve(self) -> None:
        self._check_origin()
        try:
            since, filters = parse_query(dict(self.socket.query_params.dict()))
        except BadRequest as exc:
            raise Close(CLOSE_BAD_REQUEST, str(exc)) from None
        with self.feed.admit(self._client_ip()):
            if not await self.feed.hub.wait_ready(5.0):
                raise Close(CLOSE_TRY_LATER, "the feed's database is unavailable: retry shortly")
            assert self.feed.hub.position is not None
            start = self.feed.hub.position  # with no `since`, the stream starts here
            principal = await self._authenticate()
            after = since if since is not None else start
            if since is not None:
                await self._check_cursor(since)
            await self._stream(after, filters, principal)

    def _client_ip(self) -> str:
        client = self.socket.client
        return client.host if client is not None else "unknown"

    def _check_origin(self) -> None:
        origin = self.socket.headers.get("origin")
        if origin is None:
            return  # not a browser: Origin protects browsers' users, not servers
        allowed = self.settings.ws_allowed_origins
        if "*" in allowed or origin in allowed:
            return
        if urlsplit(origin).netloc == self.socket.headers.get("host"):
            return  # the API's own page
        raise Close(CLOSE_FORBIDDEN, f"origin {origin[:60]} is not allowed (WS_ALLOWED_ORIGINS)")

    async def _authenticate(self) -> Principal | None:
        header = self.socket.headers.get("authorization")
        if header is not None:
            token = bearer_token(header)  # the write routes' rule
            if token is None:
                raise Close(CLOSE_UNAUTHENTICATED, "Authorization must be: Bearer <token>")
            return self._verify(token)
        if self.settings.ws_auth_wait <= 0 or "origin" not in self.socket.headers:
            # Only browsers (they send Origin) cannot set the header: only they get a moment
            # to send a first `auth` message before the stream starts.
            return None
        try:
            data = await asyncio.wait_for(self._receive(), self.settings.ws_auth_wait)
        except TimeoutError:
            return None  # no first message: an anonymous stream
        message = self._parse(data)
        if isinstance(message, Auth):
            return self._verify(message.token)
        return None

    def _verify(self, token: str) -> Principal:
        verify: Callable[[str], Principal] | None = self.feed.verify
        if verify is None:
            raise Close(CLOSE_UNAUTHENTICATED, "this server checks no tokens (no JWT_SECRET)")
        try:
            return verify(token)
        except TokenRefused as exc:
            code = CLOSE_FORBIDDEN if exc.forbidden else CLOSE_UNAUTHENTICATED
            raise Close(code, str(exc)) from None

    async def _check_cursor(self, since: int) -> None:
        try:
            bounds = await outbox_bounds(self.feed.pool)
        except DB_ERRORS:
            raise Close(CLOSE_TRY_LATER, "the feed's database is unavailable: retry") from None
        last = bounds[1] if bounds else 0
        if since > max(last, self.feed.hub.position or 0):
            raise Close(CLOSE_BAD_REQUEST, f"since={since} is ahead of the feed (last {last})")
        if bounds is not None and since < bounds[0] - 1:
            raise Close(
                CLOSE_CURSOR_GONE,
                f"since={since} is older than the retained feed (from {bounds[0]}):"
                " re-sync from the read API, then connect without since",
            )

    async def _receive(self) -> str | bytes:
        event = await self.socket.receive()
        if event["type"] == "websocket.disconnect":
            raise ClientGone
        text: Any = event.get("text")
        data: str | bytes = text if text is not None else (event.get("bytes") or b"")  # type: ignore[assignment]
        if len(data) > self.settings.ws_max_message:
            raise Close(CLOSE_TOO_BIG, f"messages are limited to {self.settings.ws_max_message} B")
        return data

    @staticmethod
    def _parse(data: str | bytes) -> Any:
        try:
            return parse_client_message(data)
        except BadRequest as exc:
            raise Close(CLOSE_BAD_REQUEST, str(exc)) from None

    async def _stream(self, after: int, filters: Filters, principal: Principal | None) -> None:
        subject = principal.subject if principal is not None else None
        subscriber = Subscriber(
            filters,
            subject,
            self.settings.ws_queue_size,
            lambda: self.close_with(
                CLOSE_SLOW_CONSUMER,
                f"slow consumer: resume with since={self.position}",
            ),
        )
        hub = self.feed.hub
        start = hub.subscribe(subscriber)
        subscriber.floor = max(after, start)
        self.position = after
        metrics.CLIENTS.inc()
        self.feed.connections.add(self)
        sender = asyncio.create_task(self._send_loop(subscriber, after, start))
        receiver = asyncio.create_task(self._receive_loop())
        try:
            waits: list[asyncio.Future[Any]] = [sender, receiver, self.closing]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in (sender, receiver):
                if task.done() and not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    if isinstance(exc, Close):
                        self.close_with(exc.code, exc.reason)
                    elif isinstance(exc, DB_ERRORS):
                        self.close_with(CLOSE_TRY_LATER, "the feed's database is unavailable")
                    elif isinstance(exc, ClientGone | WebSocketDisconnect):
                        pass
                    else:
                        log.error("feed connection failed", exc_info=exc)
                        self.close_with(1011, "internal error")
        finally:
            hub.unsubscribe(subscriber)
            self.feed.connections.discard(self)
            metrics.CLIENTS.dec()
            receiver.cancel()
            # The close frame goes out behind what the sender already wrote; then the sender
            # stops (it never starts a frame once closing is decided).
            await self._close_socket()
            sender.cancel()
            for task in (sender, receiver):
                with contextlib.suppress(BaseException):
                    await task

    async def _send(self, text: str, last: int, count: int) -> None:
        if self.closing.done():
            raise asyncio.CancelledError
        self.position = last  # set before the write: a close reason names what was written
        await self.socket.send_data(text)
        metrics.MESSAGES_SENT.inc(count)

    async def _send_loop(self, subscriber: Subscriber, after: int, start: int) -> None:
        if after < start:
            async for items, _ in outbox_items(self.feed.pool, after, REPLAY_PAGE, start):
                chosen = [i.wire for i in items if subscriber.accepts(i)]
                if chosen:
                    await self._send("\n".join(chosen), items[-1].seq, len(chosen))
        self.position = subscriber.floor  # max(after, start): replayed or skipped up to here
        authenticated = subscriber.subject is not None
        await self._send(control(Live(str(self.position), authenticated)), self.position, 0)
        self._last_heartbeat = asyncio.get_running_loop().time()  # `live` counts as the first
        heartbeat = self.settings.ws_heartbeat
        loop = asyncio.get_running_loop()
        while True:
            # A heartbeat every WS_HEARTBEAT s, busy or not: clients that answer heartbeats
            # stay clear of the idle timeout however much else they receive.
            due = self._last_heartbeat + heartbeat - loop.time()
            if due <= 0:
                self._last_heartbeat = loop.time()
                await self._send(control(Heartbeat(str(self.position))), self.position, 0)
                continue
            if not subscriber.frames:
                # A timer rather than wait_for, which costs a task per wait (1,000 clients
                # wake on every batch).
                timer = loop.call_later(due, subscriber.wake.set)
                try:
                    await subscriber.wake.wait()
                finally:
                    timer.cancel()
                if not subscriber.frames:
                    subscriber.wake.clear()
                    continue
            frames = subscriber.take()
            texts: list[str] = []
            size = count = 0
            last = self.position
            for text, last, n in frames:
                if text is not None:
                    texts.append(text)
                    size += len(text)
                    count += n
                if texts and size >= FRAME_BYTES:
                    await self._send("\n".join(texts), last, count)
                    texts, size, count = [], 0, 0
            if texts:
                await self._send("\n".join(texts), last, count)
            else:
                self.position = max(self.position, last)

    async def _receive_loop(self) -> None:
        idle = self.settings.ws_idle_timeout
        while True:
            try:
                data = await asyncio.wait_for(self._receive(), idle)
            except TimeoutError:
                raise Close(
                    CLOSE_IDLE,
                    f'idle for {idle:g} s: send any message, e.g. {{"type":"ping"}}',
                ) from None
            message = self._parse(data)
            if isinstance(message, Auth):
                raise Close(CLOSE_BAD_REQUEST, "auth must be the first message")
