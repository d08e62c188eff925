"""The feed across processes and failures: two API processes, slow consumers, Redis and
Postgres restarted mid-stream (real services, real processes)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
import time
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
from websockets.asyncio.client import connect

from chain.rpc import RpcClient
from db.engine import migrate, with_database
from discograph.embedded import start_postgres, start_valkey
from tests.feeding import Emitter, feed_client, ws_url
from tests.indexing import indexer_settings, live_indexer, wait_synced
from tests.stack import api_process
from tests.test_feed import emitter, indexing, outbox_seqs, served_api  # noqa: F401


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as answer:  # noqa: S310
        text = answer.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


async def test_clients_on_two_api_processes_all_get_every_event_through_one_publisher(
    database_url: str,
    redis_url: str,
    rpc: RpcClient,
    emitter: Emitter,
    service_dir: Path,
) -> None:
    async with indexing(database_url, rpc, emitter) as task:
        with (
            api_process(database_url, redis_url, service_dir) as (first, _),
            api_process(database_url, redis_url, service_dir) as (second, _),
        ):
            async with contextlib.AsyncExitStack() as stack:
                clients = [
                    await stack.enter_async_context(feed_client(ws_url(api)))
                    for api in (first, second, first, second)
                ]
                for client in clients:
                    await asyncio.wait_for(client.live.wait(), 10)
                for _ in range(10):
                    await emitter.block(mints=30)
                await wait_synced(database_url, rpc, task=task)
                seqs = await outbox_seqs(database_url)
                for client in clients:
                    await client.wait_events(len(seqs))
            publishers = metric(first, "discograph_feed_publisher") + metric(
                second, "discograph_feed_publisher"
            )
    assert publishers == 1
    for client in clients:
        assert [int(e["cursor"]) for e in client.events] == seqs


class StalledClient:
    """A websocket client that opens the connection and then reads nothing (a raw socket
    with a tiny receive buffer: the websocket libraries keep reading into memory), until
    `read_all` reads what the server wrote: its messages and its close frame."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(4096)
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def _exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def read_all(self, timeout: float = 20.0) -> tuple[list[dict[str, Any]], int | None, str]:
        self.sock.settimeout(timeout)
        messages: list[dict[str, Any]] = []
        fragments = b""
        with contextlib.suppress(EOFError, OSError):
            while True:
                first, second = self._exactly(2)
                length = second & 0x7F
                if length == 126:
                    length = struct.unpack("!H", self._exactly(2))[0]
                elif length == 127:
                    length = struct.unpack("!Q", self._exactly(8))[0]
                payload = self._exactly(length)
                if first & 0x0F == 8:
                    return messages, struct.unpack("!H", payload[:2])[0], payload[2:].decode()
                fragments += payload
                if first & 0x80:
                    messages += [json.loads(line) for line in fragments.decode().splitlines()]
                    fragments = b""
        return messages, None, ""

    def close(self) -> None:
        self.sock.close()


async def test_a_stalled_client_is_closed_4008_with_a_cursor_and_resumes_with_nothing_lost(
    database_url: str,
    redis_url: str,
    rpc: RpcClient,
    emitter: Emitter,
    service_dir: Path,
) -> None:
    async with indexing(database_url, rpc, emitter) as task:
        with api_process(database_url, redis_url, service_dir, WS_QUEUE_SIZE="200") as (api, proc):
            port = int(api.rsplit(":", 1)[1])
            baseline = rss_mib(proc.pid)
            stalled = [StalledClient(port, "/ws/events") for _ in range(50)]
            await asyncio.sleep(0.5)  # all subscribed (no Origin: the stream starts at once)
            # ~7 MB of messages: more than the kernel buffers between a stalled client and
            # the server hold (a loopback send buffer grows to 4 MiB).
            for _ in range(40):
                await emitter.block(mints=500)
            await wait_synced(database_url, rpc, task=task)
            await asyncio.sleep(1.0)
            grown = rss_mib(proc.pid) - baseline
            print(f"API RSS {baseline:.0f} MiB, +{grown:.1f} MiB with 50 stalled clients")
            # A stalled client reads again: what was written before the close, then the close.
            messages, code, reason = await asyncio.to_thread(stalled[0].read_all)
            assert code == 4008, (code, reason, len(messages))
            assert messages[0]["type"] == "live"
            got = [int(m["cursor"]) for m in messages[1:]]
            cursor = reason.rsplit("since=", 1)[1]
            assert got[-1] == int(cursor)
            async with feed_client(ws_url(api, since=cursor)) as resumed:
                seqs = await outbox_seqs(database_url)
                await resumed.wait_events(len([s for s in seqs if s > int(cursor)]))
            closes = metric(api, "discograph_feed_slow_consumer_closes_total")
            for client in stalled:
                client.close()
    assert got + [int(e["cursor"]) for e in resumed.events] == seqs
    assert closes == 50
    assert grown < 100, f"RSS grew by {grown:.0f} MiB with 50 stalled clients"


async def _stream_through(
    database_url: str,
    api: str,
    emitter: Emitter,
    fault: Any,
    rounds: int = 3,
) -> list[int]:
    """Events before, during and after `fault()`; the client's cursors."""
    async with feed_client(ws_url(api)) as client:
        await asyncio.wait_for(client.live.wait(), 10)
        start = int(next(m for m in client.messages if m["type"] == "live")["cursor"])
        for _ in range(rounds):
            await emitter.block(mints=20)
        await fault()
        for _ in range(rounds):
            await emitter.block(mints=20)
        deadline = time.monotonic() + 30
        while True:
            seqs = [s for s in await outbox_seqs(database_url) if s > start]
            if len(client.events) >= len(seqs) and len(seqs) >= 6 * 20:
                break
            assert time.monotonic() < deadline, (len(client.events), len(seqs))
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
        return [int(e["cursor"]) for e in client.events], seqs


async def test_a_redis_restart_mid_stream_loses_and_repeats_nothing(
    database_url: str,
    rpc: RpcClient,
    emitter: Emitter,
    service_dir: Path,
) -> None:
    valkey = start_valkey(service_dir / "valkey")
    try:
        async with indexing(database_url, rpc, emitter):
            with served_api(database_url, valkey.url()) as api:

                async def restart_redis() -> None:
                    nonlocal valkey
                    port = valkey.port
                    valkey.stop()
                    await emitter.block(mints=20)  # committed while Redis is down
                    await asyncio.sleep(1.5)
                    valkey = start_valkey(service_dir / "valkey", port=port)
                    await asyncio.sleep(1.0)

                got, seqs = await _stream_through(database_url, api, emitter, restart_redis)
    finally:
        valkey.stop()
    assert got == seqs


async def test_a_postgres_restart_mid_stream_loses_and_repeats_nothing(
    rpc: RpcClient,
    emitter: Emitter,
    service_dir: Path,
    redis_url: str,
) -> None:
    server = start_postgres(service_dir / "pg", durable=False)
    try:
        admin = await asyncpg.connect(server.dsn("postgres"))
        await admin.execute("CREATE DATABASE feed")
        await admin.close()
        database_url = with_database(server.dsn("postgres"), "feed")
        await migrate(database_url)
        settings = indexer_settings(rpc.url, EXTRA_CONTRACTS=emitter.contract)
        async with contextlib.AsyncExitStack() as stack:
            # The indexer stops when it loses its lease (the database went away): as under a
            # process supervisor, a new one starts once Postgres is back.
            indexer = contextlib.AsyncExitStack()
            task = await indexer.enter_async_context(live_indexer(database_url, settings))
            stack.push_async_callback(lambda: indexer.aclose())
            await wait_synced(database_url, rpc, task=task)
            with served_api(database_url, redis_url) as api:

                async def restart_postgres() -> None:
                    nonlocal server, indexer
                    port = server.port
                    server.stop()
                    await emitter.block(mints=20)  # on chain while the database is down
                    await asyncio.sleep(1.0)
                    server = start_postgres(service_dir / "pg", durable=False, port=port)
                    with contextlib.suppress(Exception):
                        await indexer.aclose()
                    indexer = contextlib.AsyncExitStack()
                    await indexer.enter_async_context(live_indexer(database_url, settings))

                got, seqs = await _stream_through(database_url, api, emitter, restart_postgres)
    finally:
        server.stop()
    assert got == seqs


async def test_ws_compression_off_turns_permessage_deflate_off(
    database_url: str, redis_url: str, service_dir: Path
) -> None:
    negotiated = {}
    for setting in ("on", "off"):
        with api_process(database_url, redis_url, service_dir, WS_COMPRESSION=setting) as (
            api,
            _,
        ):
            async with connect(ws_url(api)) as connection:
                assert connection.response is not None
                negotiated[setting] = connection.response.headers.get("Sec-WebSocket-Extensions")
    assert "permessage-deflate" in (negotiated["on"] or "")
    assert negotiated["off"] is None
