"""Album read routes over the demo catalog, minted on anvil and indexed by the real indexer."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest_asyncio
from eth_utils.address import to_checksum_address

from api.params import encode_cursor
from chain.album import call_view
from chain.rpc import RpcClient
from chain.signer import Signer
from discograph.demo import DEMO_CATALOG, demo_uri, seed_demo
from discograph.localchain import Anvil
from tests.indexing import index_to_head, indexer_settings


@dataclass
class Demo:
    contract: str
    indexed_block: int
    wallets: list[Signer]


@pytest_asyncio.fixture
async def demo(
    anvil: Anvil,
    rpc: RpcClient,
    pool: asyncpg.Pool,
    dev_signers: list[Signer],
    album_contract: str,
    database_url: str,
) -> Demo:
    """The demo catalog seeded the way `discograph dev` does it, then indexed to the head."""
    wallets = dev_signers[1:]
    await seed_demo(pool, rpc, dev_signers[0], album_contract, wallets)
    indexed = await index_to_head(
        database_url, indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album_contract)
    )
    return Demo(album_contract, indexed, wallets)


async def _get(client: Any, url: str, status: int = 200) -> Any:
    response = await client.get(url)
    assert response.status_code == status, (url, response.text)
    return response.json()


async def _all_albums(client: Any) -> list[dict[str, Any]]:
    body = await _get(client, "/albums")
    assert body["next_cursor"] is None
    return list(body["items"])


async def test_minted_demo_albums_show_the_owner_uri_and_block_the_chain_has(
    demo: Demo, rpc: RpcClient, api_client: Any
) -> None:
    response = await api_client.get("/albums")
    assert response.status_code == 200
    assert response.headers["x-indexed-block"] == str(demo.indexed_block)
    albums = response.json()["items"]
    assert len(albums) == sum(len(records) for _, records in DEMO_CATALOG)
    for album in albums:
        assert album["status"] == "minted"
        nft = album["nft"]
        assert nft is not None
        assert nft["contract"] == demo.contract
        token = int(nft["token_id"])
        assert nft["token_id"] == str(token)
        (owner,) = await call_view(rpc, demo.contract, "ownerOf", token)
        assert nft["owner"] == to_checksum_address(owner)
        (uri,) = await call_view(rpc, demo.contract, "tokenURI", token)
        assert nft["token_uri"] == uri == demo_uri(uuid.UUID(album["id"]))
        block = await rpc.call("eth_getBlockByNumber", [hex(nft["block_number"]), False])
        assert nft["block_hash"] == block["hash"]
        assert nft["finality"] in ("unsafe", "safe", "finalized")
        assert album["metadata"] == {"genre": "demo", "year": 2026}
    # Traded tokens moved away from the artist's wallet: the API follows the chain, not the mint.
    assert any(a["nft"]["owner"] != a["artist"]["wallet"] for a in albums)


async def test_albums_carry_their_artist_and_tracks_in_position_order(
    demo: Demo, api_client: Any
) -> None:
    albums = await _all_albums(api_client)
    expected = {
        title: (artist, index, [song for song, _ in songs])
        for index, (artist, records) in enumerate(DEMO_CATALOG)
        for title, songs in records
    }
    assert sorted(a["title"] for a in albums) == sorted(expected)
    for album in albums:
        artist, index, songs = expected[album["title"]]
        assert album["artist"]["name"] == artist
        assert album["artist"]["wallet"] == demo.wallets[index].address
        assert [t["position"] for t in album["tracks"]] == list(range(1, len(songs) + 1))
        assert [t["title"] for t in album["tracks"]] == songs
        assert all(t["duration_s"] > 0 and t["isrc"] is None for t in album["tracks"])
        one = await _get(api_client, f"/albums/{album['id']}")
        assert one == album


async def test_paging_one_by_one_visits_every_album_once_newest_first(
    demo: Demo, api_client: Any
) -> None:
    albums = await _all_albums(api_client)
    keys = [(a["created_at"], a["id"]) for a in albums]
    assert keys == sorted(keys, reverse=True)
    seen: list[str] = []
    cursor: str | None = None
    while True:
        url = "/albums?limit=1" + (f"&cursor={cursor}" if cursor else "")
        page = await _get(api_client, url)
        assert len(page["items"]) == 1
        seen.append(page["items"][0]["id"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(seen) <= len(albums)
    assert seen == [a["id"] for a in albums]

    # Pages of two, filtered by status: the same order.
    first = await _get(api_client, "/albums?limit=2&status=minted")
    second = await _get(api_client, f"/albums?limit=2&status=minted&cursor={first['next_cursor']}")
    assert [a["id"] for a in first["items"] + second["items"]] == seen
    assert second["next_cursor"] is None
    assert (await _get(api_client, "/albums?status=draft"))["items"] == []


async def test_status_filter_follows_the_indexer_from_minting_to_minted(
    anvil: Anvil,
    rpc: RpcClient,
    pool: asyncpg.Pool,
    dev_signers: list[Signer],
    album_contract: str,
    database_url: str,
    api_client: Any,
) -> None:
    await seed_demo(pool, rpc, dev_signers[0], album_contract, dev_signers[1:])
    minting = (await _get(api_client, "/albums?status=minting"))["items"]
    assert len(minting) == 4
    assert all(a["nft"] is None for a in minting)
    await index_to_head(
        database_url, indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album_contract)
    )
    assert (await _get(api_client, "/albums?status=minting"))["items"] == []
    minted = (await _get(api_client, "/albums?status=minted"))["items"]
    assert {a["id"] for a in minted} == {a["id"] for a in minting}
    assert all(a["nft"] is not None for a in minted)


async def test_artist_route_lists_only_that_artists_albums(demo: Demo, api_client: Any) -> None:
    albums = await _all_albums(api_client)
    artists = {a["artist"]["id"] for a in albums}
    assert len(artists) == len(DEMO_CATALOG)
    for artist_id in artists:
        body = await _get(api_client, f"/artists/{artist_id}/albums")
        assert body["next_cursor"] is None
        assert body["items"] == [a for a in albums if a["artist"]["id"] == artist_id]
    (prolific,) = [a for a in artists if sum(x["artist"]["id"] == a for x in albums) == 2]
    first = await _get(api_client, f"/artists/{prolific}/albums?limit=1")
    rest = await _get(
        api_client, f"/artists/{prolific}/albums?limit=1&cursor={first['next_cursor']}"
    )
    assert rest["next_cursor"] is None
    assert [a["id"] for a in first["items"] + rest["items"]] == [
        a["id"] for a in albums if a["artist"]["id"] == prolific
    ]


async def test_unknown_album_and_artist_are_json_404s(api_client: Any) -> None:
    for url in (f"/albums/{uuid.uuid4()}", f"/artists/{uuid.uuid4()}/albums"):
        body = await _get(api_client, url, 404)
        assert body["status_code"] == 404


async def test_bad_album_requests_are_400s_naming_the_parameter(
    api_client: Any, pool: asyncpg.Pool
) -> None:
    from db.catalog import NewAlbum, insert_album, insert_artist

    async with pool.acquire() as conn:
        artist = await insert_artist(conn, "Solo", None)
        album = await insert_album(conn, NewAlbum(artist, "Only One"))
    assert (await _get(api_client, f"/albums/{album}"))["artist"]["wallet"] is None
    cursors = [
        "garbage!",
        "e30",  # {}
        encode_cursor("albums", ["a", "b"]),
        encode_cursor("albums", [1, "not-a-uuid"]),
        encode_cursor("albums", [10**30, str(uuid.uuid4())]),
        encode_cursor("albums", [-(10**30), str(uuid.uuid4())]),
        encode_cursor("albums", [True, str(uuid.uuid4())]),
        encode_cursor("albums", [1]),
    ]
    cases: list[tuple[str, str]] = [
        ("/albums/not-a-uuid", "album_id"),
        ("/albums/12345", "album_id"),
        (f"/albums/{album}x", "album_id"),
        ("/artists/nope/albums", "artist_id"),
        ("/albums?limit=0", "limit"),
        ("/albums?limit=201", "limit"),
        ("/albums?limit=-1", "limit"),
        ("/albums?limit=abc", "limit"),
        ("/albums?limit=99999999999999999999999", "limit"),
        ("/albums?status=burned", "status"),
        ("/albums?status=", "status"),
        ("/albums?colour=blue", "colour"),
        ("/albums?limit=5&owner=0x00", "owner"),
        (f"/albums/{album}?expand=all", "expand"),
        (f"/artists/{artist}/albums?status=minted", "status"),
        (f"/artists/{artist}/albums?limit=0", "limit"),
        *((f"/albums?cursor={c}", "cursor") for c in cursors),
        *((f"/artists/{artist}/albums?cursor={c}", "cursor") for c in cursors),
    ]
    for url, field in cases:
        response = await api_client.get(url)
        assert response.status_code == 400, (url, response.status_code, response.text)
        body = response.json()
        assert body["status_code"] == 400
        named = [e.get("key") for e in body.get("extra") or []]
        assert field in named or field in body["detail"], (url, body)
