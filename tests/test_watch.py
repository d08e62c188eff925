"""`discograph watch`: the feed in the terminal, resuming by itself (real API and chain)."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from pathlib import Path

from chain.rpc import RpcClient
from discograph.processes import free_port
from discograph.watch import describe, feed_url, watch
from tests.feeding import Emitter
from tests.test_feed import emitter, indexing, outbox_seqs, served_api  # noqa: F401

DISCOGRAPH = str(Path(sys.executable).parent / "discograph")


def test_feed_url_takes_http_or_ws_bases_and_adds_the_query() -> None:
    assert feed_url("http://h:8000", "5", {"types": "mint", "address": None}) == (
        "ws://h:8000/ws/events?types=mint&since=5"
    )
    assert feed_url("wss://h/ws/events", None, {}) == "wss://h/ws/events"


def test_each_message_type_reads_as_one_line() -> None:
    base = {"cursor": "9", "block_number": 3, "log_index": 1, "token_id": "4", "contract": "0xC"}
    assert "transfer" in describe({"type": "transfer", "from": "0xA", "to": "0xB", **base})
    assert describe({"type": "removed", "removed_type": "mint", **base}).split()[1] == "REMOVED"
    final = describe({"type": "finalized", "cursor": "9", "block_number": 3, "block_hash": "0x1"})
    assert "finalized up to block 3" in final
    status = {"type": "mint_status", "cursor": "9", "mint_id": "m", "status": "mined"}
    assert "mint m mined" in describe(status)


async def watch_cli(api: str, *args: str) -> asyncio.subprocess.Process:
    """`discograph watch --url API ARGS…` as a subprocess (no .env read)."""
    return await asyncio.create_subprocess_exec(
        DISCOGRAPH,
        "--env-file",
        "/nonexistent",
        "watch",
        "--url",
        api,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_the_cli_prints_n_json_lines_in_cursor_order(
    database_url: str, redis_url: str, rpc: RpcClient, emitter: Emitter
) -> None:
    async with indexing(database_url, rpc, emitter):
        with served_api(database_url, redis_url) as api:
            process = await watch_cli(api, "--since", "0", "--json", "--max-messages", "60")
            for _ in range(3):
                await emitter.block(mints=20)
            out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert [int(m["cursor"]) for m in lines] == (await outbox_seqs(database_url))[:60]


async def test_watch_resumes_after_the_server_goes_away_with_nothing_lost_or_repeated(
    database_url: str, redis_url: str, rpc: RpcClient, emitter: Emitter
) -> None:
    port = free_port()
    out, err = io.StringIO(), io.StringIO()
    async with indexing(database_url, rpc, emitter):
        with served_api(database_url, redis_url, port=port) as api:
            watching = asyncio.create_task(
                watch(api, since="0", as_json=True, max_messages=100, out=out, err=err)
            )
            for _ in range(2):
                await emitter.block(mints=20)
            await asyncio.sleep(0.5)
        for _ in range(2):  # committed while no API runs
            await emitter.block(mints=20)
        with served_api(database_url, redis_url, port=port):
            for _ in range(1):
                await emitter.block(mints=20)
            result = await asyncio.wait_for(watching, 30)
    assert result.code == 0
    assert "reconnecting" in err.getvalue()
    cursors = [int(json.loads(line)["cursor"]) for line in out.getvalue().splitlines()]
    assert cursors == await outbox_seqs(database_url)


async def test_a_refused_request_exits_2_with_the_reason(database_url: str, redis_url: str) -> None:
    with served_api(database_url, redis_url) as api:
        process = await watch_cli(api, "--types", "nonsense")
        _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert "4400" in err.decode()
    assert "types" in err.decode()
