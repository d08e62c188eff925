"""`discograph watch`: the feed in the terminal, resuming by itself (real API, chain, indexer)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from chain.rpc import RpcClient
from discograph import watch as watch_module
from discograph.processes import free_port
from discograph.watch import describe, feed_url, watch
from tests.feeding import Emitter
from tests.indexing import wait_synced
from tests.test_api_writes import token
from tests.test_feed import emitter, indexing, outbox_seqs, served_api  # noqa: F401

DISCOGRAPH = str(Path(sys.executable).parent / "discograph")
ADDRESS = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
HASH = "0x" + "ab" * 32


async def run_cli(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        DISCOGRAPH,
        "--env-file",
        "/nonexistent",
        "watch",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def until(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@dataclass
class Watching:
    """`watch()` running in the background: its task, stop event, output and errors."""

    task: asyncio.Task[int]
    stop: asyncio.Event
    out: io.StringIO
    err: io.StringIO

    def lines(self) -> list[str]:
        return self.out.getvalue().splitlines()

    def said(self, text: str) -> bool:
        return text in self.err.getvalue()


@contextlib.asynccontextmanager
async def watching(api: str, **kwargs: Any) -> AsyncIterator[Watching]:
    stop = asyncio.Event()
    out, err = io.StringIO(), io.StringIO()
    task = asyncio.create_task(watch(api, output=out, errors=err, stop=stop, **kwargs))
    try:
        yield Watching(task, stop, out, err)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


def test_feed_url_takes_http_or_ws_bases_and_adds_the_query() -> None:
    assert feed_url("http://h:8000", "5", {"types": "mint", "address": None}) == (
        "ws://h:8000/ws/events?types=mint&since=5"
    )
    assert feed_url("https://h/", None, {}) == "wss://h/ws/events"
    assert feed_url("wss://h/ws/events", None, {}) == "wss://h/ws/events"
    with pytest.raises(ValueError, match="--url"):
        feed_url("h:8000", None, {})


def test_each_message_type_reads_as_one_line() -> None:
    fact = {"block_number": 812, "log_index": 3, "token_id": "17", "contract": ADDRESS}
    parties = {"from": ADDRESS, "to": "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"}
    transfer = describe({"type": "transfer", "cursor": "12345", **fact, **parties})
    assert transfer == (
        "12345 transfer    block 812 #3  0x5FbDB2…→0xe7f172…  token 17  contract 0x5FbDB2…"
    )
    removed = describe(
        {"type": "removed", "cursor": "12350", "removed_type": "transfer", **fact, **parties}
    )
    assert removed == "REMOVED " + transfer.replace("12345", "12350")
    mint = describe({"type": "mint", "cursor": "7", "album_id": "a1", "uri": "ipfs://x", **fact})
    assert mint.startswith("7 mint        block 812 #3  token 17")
    assert mint.endswith("album a1  uri ipfs://x")
    final = {"type": "finalized", "cursor": "9", "block_number": 3, "block_hash": HASH}
    assert describe(final) == "9 finalized up to block 3 (0xabababab…)"
    status = {
        "type": "mint_status",
        "cursor": "10",
        "mint_id": "m1",
        "status": "sent",
        "album_id": "a1",
        "to": ADDRESS,
        "tx_hash": HASH,
    }
    assert (
        describe(status) == "10 mint_status sent  mint m1  album a1  to 0x5FbDB231…  tx 0xabababab…"
    )
    assert describe({"type": "heartbeat", "cursor": "11"}) == "11 heartbeat"


async def test_the_cli_prints_n_json_lines_in_cursor_order(
    database_url: str, redis_url: str, rpc: RpcClient, emitter: Emitter
) -> None:
    async with indexing(database_url, rpc, emitter):
        with served_api(database_url, redis_url) as api:
            cli = asyncio.create_task(
                run_cli("--url", api, "--since", "0", "--json", "--max-messages", "60")
            )
            for _ in range(3):
                await emitter.block(mints=20)
            code, out, err = await cli
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 60
    cursors = [int(m["cursor"]) for m in lines]
    assert cursors == sorted(set(cursors))
    assert cursors == (await outbox_seqs(database_url))[:60]
    assert {m["type"] for m in lines} == {"transfer"}


async def test_human_lines_and_a_stop_event(
    database_url: str, redis_url: str, rpc: RpcClient, emitter: Emitter
) -> None:
    async with indexing(database_url, rpc, emitter):
        with served_api(database_url, redis_url) as api:
            async with watching(api, filters={"types": "transfer"}) as w:
                await until(lambda: w.said("live from cursor"), what="live")
                await emitter.block(mints=5)
                await until(lambda: len(w.lines()) == 5, what="5 lines")
                w.stop.set()
                assert await asyncio.wait_for(w.task, 5) == 0
    seqs = await outbox_seqs(database_url)
    lines = w.lines()
    pattern = r"(\d+) transfer    block \d+ #\d+  0x0{6}…→0x0{6}…  token (\d+)  contract 0x\w{6}…"
    matches = [re.fullmatch(pattern, line) for line in lines]
    assert all(matches), lines
    assert [int(m[1]) for m in matches if m] == seqs[-5:]
    assert [int(m[2]) for m in matches if m] == [1, 2, 3, 4, 5]


async def test_watch_resumes_after_the_server_goes_away_with_nothing_lost_or_repeated(
    database_url: str, redis_url: str, rpc: RpcClient, emitter: Emitter
) -> None:
    port = free_port()  # the API comes back on the same URL
    total = 5 * 20
    async with indexing(database_url, rpc, emitter):
        # Started before the API is up: it retries until it can connect.
        api = f"http://127.0.0.1:{port}"
        async with watching(api, since="0", json_lines=True, max_messages=total) as w:
            with served_api(database_url, redis_url, port=port):
                for _ in range(2):
                    await emitter.block(mints=20)
                await until(lambda: len(w.lines()) >= 20, what="20 lines")
            # The server went away mid-stream; these are committed while no API runs.
            for _ in range(2):
                await emitter.block(mints=20)
            await asyncio.sleep(1.0)  # the watcher retries against a closed port meanwhile
            assert not w.task.done()
            with served_api(database_url, redis_url, port=port):
                await emitter.block(mints=20)
                code = await asyncio.wait_for(w.task, 30)
    assert code == 0
    assert w.said("reconnecting")
    cursors = [int(json.loads(line)["cursor"]) for line in w.lines()]
    assert len(cursors) == len(set(cursors)) == total
    assert cursors == await outbox_seqs(database_url)


async def test_a_refused_request_exits_2_with_the_reason(database_url: str, redis_url: str) -> None:
    with served_api(database_url, redis_url) as api:
        code, out, err = await run_cli("--url", api, "--types", "nonsense", timeout=30)
        bad_token, _, token_err = await run_cli("--url", api, "--token", "not-a-jwt", timeout=30)
        wrong = io.StringIO()
        not_the_feed = await asyncio.wait_for(watch(api + "/nope", errors=wrong), 10)
    assert code == 2
    assert out == ""
    assert "4400" in err
    assert "types: each must be one of" in err
    assert bad_token == 2
    assert "4001" in token_err
    assert not_the_feed == 2
    assert "HTTP 403" in wrong.getvalue()


async def test_a_token_authenticates_and_a_pruned_cursor_exits_1(
    database_url: str, redis_url: str, rpc: RpcClient, emitter: Emitter
) -> None:
    async with indexing(database_url, rpc, emitter) as indexer:
        for _ in range(2):
            await emitter.block(mints=5)
        await wait_synced(database_url, rpc, task=indexer)
        seqs = await outbox_seqs(database_url)
        conn = await asyncpg.connect(database_url)
        try:  # what retention pruning does
            await conn.execute("DELETE FROM outbox WHERE seq <= $1", seqs[4])
        finally:
            await conn.close()
        with served_api(database_url, redis_url) as api:
            async with watching(api, token=token(str(uuid.uuid4()))) as w:
                await until(lambda: w.said("authenticated"), what="authenticated")
                w.stop.set()
                assert await asyncio.wait_for(w.task, 5) == 0
            err = io.StringIO()
            gone = await asyncio.wait_for(watch(api, since=str(seqs[0]), errors=err), 10)
    assert w.said("live from cursor")
    assert gone == 1
    assert "4410" in err.getvalue()
    assert "re-sync" in err.getvalue()


async def test_a_busy_feed_is_kept_alive_without_heartbeats(
    database_url: str,
    redis_url: str,
    rpc: RpcClient,
    emitter: Emitter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With heartbeats rarer than the idle timeout (a server set up that way), the watcher pings
    # by itself (here every 0.3 s), or the server would close the connection as idle (4408).
    monkeypatch.setattr(watch_module, "KEEPALIVE", 0.3)
    async with indexing(database_url, rpc, emitter):
        with served_api(database_url, redis_url, WS_HEARTBEAT="3600", WS_IDLE_TIMEOUT="2.5") as api:
            async with watching(api, json_lines=True) as w:
                await until(lambda: w.said("live from cursor"), what="live")
                deadline = time.monotonic() + 6
                while time.monotonic() < deadline:
                    await emitter.block(mints=2)
                    await asyncio.sleep(0.05)
                assert not w.task.done()
    assert len(w.lines()) > 20
    assert not w.said("4408"), w.err.getvalue()
    assert not w.said("reconnecting"), w.err.getvalue()


async def test_ctrl_c_exits_130_quietly(database_url: str, redis_url: str) -> None:
    with served_api(database_url, redis_url) as api:
        process = await asyncio.create_subprocess_exec(
            DISCOGRAPH,
            "--env-file",
            "/nonexistent",
            "watch",
            "--url",
            api,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stderr is not None
        line = await asyncio.wait_for(process.stderr.readline(), 20)
        assert line.startswith(b"live from cursor")
        process.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 130
    assert out == b""
    assert err == b""
