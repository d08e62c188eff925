"""Per-user delivery, filters and bad input on the feed (real Postgres, Redis, uvicorn)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import aiohttp
import asyncpg
import jwt
import websockets
from websockets.asyncio.client import connect

from chain.rpc import RpcClient
from tests.conftest import TEST_JWT_SECRET
from tests.feeding import HOLDERS, Emitter, closed_with, feed_client, ws_url
from tests.indexing import wait_synced
from tests.test_api_writes import ADMIN, OTHER_WALLET, album_body, bearer, token
from tests.test_feed import emitter, indexing, served_api  # noqa: F401 (fixture)


async def _post(http: aiohttp.ClientSession, path: str, body: Any, headers: Any) -> Any:
    async with http.post(path, json=body, headers=headers) as response:
        assert response.status < 300, await response.text()
        return await response.json()


async def test_each_user_sees_only_their_own_mint_status_and_anonymous_sees_none(
    database_url: str, redis_url: str
) -> None:
    with served_api(database_url, redis_url, CHAIN_ID="31337") as api:
        async with aiohttp.ClientSession(api) as http:
            artists = [
                (await _post(http, "/artists", {"name": name}, ADMIN))["id"]
                for name in ("Ada", "Bo")
            ]
            token_a, token_b = (token(a) for a in artists)
            host = api.removeprefix("http://")
            async with (
                feed_client(ws_url(api), additional_headers=bearer(token_a)) as user_a,
                feed_client(ws_url(api), additional_headers={"Origin": f"http://{host}"}) as user_b,
                feed_client(ws_url(api)) as anonymous,
            ):
                await user_b.connection.send(json.dumps({"type": "auth", "token": token_b}))
                for client in (user_a, user_b, anonymous):
                    await asyncio.wait_for(client.live.wait(), 10)
                mints: dict[str, list[str]] = {token_a: [], token_b: []}
                for _ in range(3):
                    for subject_token in (token_a, token_b):
                        body = album_body() | {"to": OTHER_WALLET}
                        accepted = await _post(http, "/albums/mint", body, bearer(subject_token))
                        mints[subject_token].append(accepted["mint_id"])
                await user_a.wait_events(3)
                await user_b.wait_events(3)
                await asyncio.sleep(0.5)  # anything else that would arrive has arrived
    live_a = next(m for m in user_a.messages if m["type"] == "live")
    live_b = next(m for m in user_b.messages if m["type"] == "live")
    assert live_a["authenticated"]
    assert live_b["authenticated"]
    assert [m["mint_id"] for m in user_a.events] == mints[token_a]
    assert [m["mint_id"] for m in user_b.events] == mints[token_b]
    assert {m["requester"] for m in user_a.events} == {artists[0]}
    assert {m["status"] for m in user_a.events + user_b.events} == {"queued"}
    assert anonymous.events == []
    assert not any("requester" in m for m in anonymous.messages)


def _matches(message: dict[str, Any], name: str, value: str) -> bool:
    """The documented filter semantics, applied on the client side."""
    if name == "types":
        return message["type"] in value.split(",")
    if message["type"] == "finalized":
        return True
    if name == "address":
        return value.lower() in (str(message.get("from")).lower(), str(message.get("to")).lower())
    field = {"contract": "contract", "token_id": "token_id", "album_id": "album_id"}[name]
    return str(message.get(field)).lower() == value.lower()


async def test_each_filtered_stream_equals_the_full_stream_filtered_by_the_client(
    database_url: str,
    redis_url: str,
    rpc: RpcClient,
    emitter: Emitter,
) -> None:
    filters = {
        "contract": emitter.contract,
        "token_id": "7",
        "address": HOLDERS[3],
        "types": "transfer,removed",
    }
    async with indexing(database_url, rpc, emitter) as task:
        with served_api(database_url, redis_url) as api:
            clients = {}
            contexts = []
            for name, value in [("all", None), *filters.items()]:
                query = {} if value is None else {name: value}
                context = feed_client(ws_url(api, **query))
                clients[name] = await context.__aenter__()
                contexts.append(context)
            try:
                for client in clients.values():
                    await asyncio.wait_for(client.live.wait(), 10)
                await emitter.block(mints=20)
                for _ in range(6):
                    await emitter.block(mints=5, moves=15)
                await wait_synced(database_url, rpc, task=task)  # announced, then orphaned
                await rpc.call("anvil_reorg", [2, []])
                await rpc.call("anvil_mine", ["0x1"])
                await wait_synced(database_url, rpc, task=task)
                conn = await asyncpg.connect(database_url)
                try:
                    total = await conn.fetchval("SELECT count(*) FROM outbox")
                finally:
                    await conn.close()
                await clients["all"].wait_events(total)
                await asyncio.sleep(0.5)
            finally:
                for context in contexts:
                    await context.__aexit__(None, None, None)
    full = clients["all"].events
    assert any(m["type"] == "removed" for m in full)
    for name, value in filters.items():
        expected = [m for m in full if _matches(m, name, value)]
        assert clients[name].events == expected, name
        assert expected, f"the {name} filter should match something"


async def test_bad_input_gets_its_close_code_and_the_server_keeps_serving(
    database_url: str, redis_url: str
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO outbox (chain_id, kind, payload) SELECT 31337, 'finalized',"
            " jsonb_build_object('type', 'finalized', 'chain_id', 31337, 'block_number', n,"
            " 'block_hash', '0x' || repeat('ab', 32)) FROM generate_series(1, 20) AS n"
        )
        await conn.execute("DELETE FROM outbox WHERE seq <= 10")
    finally:
        await conn.close()
    expired = jwt.encode(
        {"sub": "x", "role": "admin", "exp": int(time.time()) - 3600}, TEST_JWT_SECRET
    )
    now = int(time.time())
    no_role = jwt.encode({"sub": "x", "iat": now, "exp": now + 600}, TEST_JWT_SECRET)
    with served_api(
        database_url, redis_url, WS_MAX_PER_IP="3", WS_IDLE_TIMEOUT="1", WS_MAX_MESSAGE="256"
    ) as api:
        cases: list[tuple[str, dict[str, Any], int]] = [
            (ws_url(api, colour="red"), {}, 4400),
            (ws_url(api, since="abc"), {}, 4400),
            (ws_url(api, since="-1"), {}, 4400),
            (ws_url(api, since="99999"), {}, 4400),
            (ws_url(api, since="3"), {}, 4410),
            (ws_url(api, token_id="1" + "0" * 78), {}, 4400),
            (ws_url(api, contract="0xnope"), {}, 4400),
            (ws_url(api, address="0x70997970C51812dc3A010C7d01b50e0d17dc79c8"), {}, 4400),
            (ws_url(api, album_id="not-a-uuid"), {}, 4400),
            (ws_url(api, types="transfer,bogus"), {}, 4400),
            (ws_url(api), {"additional_headers": {"Origin": "https://evil.example"}}, 4003),
            (ws_url(api), {"additional_headers": bearer("not.a.jwt")}, 4001),
            (ws_url(api), {"additional_headers": bearer(expired)}, 4001),
            (ws_url(api), {"additional_headers": bearer(no_role)}, 4003),
            (ws_url(api), {"additional_headers": {"Authorization": f"Token {expired}"}}, 4001),
            (ws_url(api), {}, 4408),  # sends nothing: idle
        ]
        for url, extra, code in cases:
            got, reason = await closed_with(url, **extra)
            assert got == code, (url, extra, got, reason)
            assert reason, "every close names its reason"
        for message, code in [("x" * 1000, 1009), ("not json", 4400), ('{"type":"dance"}', 4400)]:
            async with connect(ws_url(api)) as connection:
                await connection.send(message)
                with contextlib.suppress(websockets.ConnectionClosed):
                    async with asyncio.timeout(5):
                        async for _ in connection:
                            pass
                assert connection.protocol.close_rcvd is not None
                assert connection.protocol.close_rcvd.code == code, message
        async with (
            feed_client(ws_url(api)) as one,
            feed_client(ws_url(api)) as two,
            feed_client(ws_url(api)) as three,
        ):
            for client in (one, two, three):
                await asyncio.wait_for(client.live.wait(), 5)
            assert (await closed_with(ws_url(api)))[0] == 4029
        async with feed_client(ws_url(api, since="10")) as fine:
            events = await fine.wait_events(10, timeout=5)
        assert [int(e["cursor"]) for e in events] == list(range(11, 21))


async def test_a_filtered_connection_gets_heartbeats_whose_cursor_follows_the_stream(
    database_url: str, redis_url: str, rpc: RpcClient, emitter: Emitter
) -> None:
    async with indexing(database_url, rpc, emitter) as task:
        with served_api(database_url, redis_url, WS_HEARTBEAT="0.3") as api:
            async with feed_client(ws_url(api, token_id="999999")) as client:
                await asyncio.wait_for(client.live.wait(), 10)
                for _ in range(8):
                    await emitter.block(mints=5)
                    await asyncio.sleep(0.1)
                await wait_synced(database_url, rpc, task=task)
                await asyncio.sleep(0.8)
    heartbeats = [int(m["cursor"]) for m in client.messages if m["type"] == "heartbeat"]
    assert client.events == []
    assert len(heartbeats) >= 3
    assert heartbeats == sorted(heartbeats)
    conn = await asyncpg.connect(database_url)
    try:
        assert heartbeats[-1] == await conn.fetchval("SELECT max(seq) FROM outbox")
    finally:
        await conn.close()


async def test_heartbeats_keep_coming_on_a_busy_feed_so_answering_them_avoids_the_idle_close(
    database_url: str, redis_url: str, rpc: RpcClient, emitter: Emitter
) -> None:
    async with indexing(database_url, rpc, emitter):
        with served_api(database_url, redis_url, WS_HEARTBEAT="0.3", WS_IDLE_TIMEOUT="1") as api:
            async with feed_client(ws_url(api), pong=True) as client:
                await asyncio.wait_for(client.live.wait(), 10)
                deadline = asyncio.get_running_loop().time() + 3.0
                while asyncio.get_running_loop().time() < deadline:  # never quiet for 0.3 s
                    await emitter.block(mints=2)
                assert client.close_code is None, (client.close_code, client.close_reason)
    kinds = [m["type"] for m in client.messages]
    assert kinds.count("heartbeat") >= 6
    assert client.close_code is None or client.close_code == 1000
