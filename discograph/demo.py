"""Demo data for `discograph dev`: artists, albums with tracks, mints and a few trades on chain."""

from __future__ import annotations

import uuid

import asyncpg

from chain.abi import encode_call, event_topic, load_artifact
from chain.album import ARTIFACT_NAME, album_id_to_bytes32
from chain.rpc import RpcClient
from chain.signer import Signer
from chain.transact import send_many
from db.catalog import NewAlbum, NewTrack, insert_album, insert_artist, set_album_status

# (artist, [(album title, [(track title, seconds)])]); each artist gets one dev wallet.
DEMO_CATALOG: list[tuple[str, list[tuple[str, list[tuple[str, int]]]]]] = [
    (
        "Aurora Lane",
        [
            ("Northern Static", [("Polar Drift", 214), ("Ice Choir", 187), ("Thaw", 242)]),
            ("Small Hours", [("3:07 AM", 199), ("Streetlight Hymn", 231)]),
        ],
    ),
    ("The Copper Tides", [("Harbour Lights", [("Undertow", 256), ("Salt & Rust", 203)])]),
    ("Mira Okafor", [("Quiet Machines", [("Relay", 188), ("Signal/Noise", 265), ("Coda", 97)])]),
]


def demo_uri(album_id: uuid.UUID) -> str:
    return f"ipfs://discograph-demo/{album_id}.json"


async def seed_demo(
    pool: asyncpg.Pool,
    rpc: RpcClient,
    minter: Signer,
    contract: str,
    wallets: list[Signer],
) -> None:
    """Create the demo catalog in Postgres, mint every album on chain and trade a few tokens.

    `wallets` are funded dev accounts: one per artist, then a fan.
    """
    artifact = load_artifact(ARTIFACT_NAME)
    mint_fn = artifact.function("mintAlbum")
    minted_topic = event_topic(artifact.event("AlbumMinted"))
    mints: list[tuple[uuid.UUID, Signer]] = []
    async with pool.acquire() as conn:
        for index, (artist_name, albums) in enumerate(DEMO_CATALOG):
            wallet = wallets[index]
            artist_id = await insert_artist(conn, artist_name, bytes.fromhex(wallet.address[2:]))
            for title, songs in albums:
                album = NewAlbum(
                    artist_id=artist_id,
                    title=title,
                    tracks=[
                        NewTrack(position, song, seconds)
                        for position, (song, seconds) in enumerate(songs, start=1)
                    ],
                    metadata={"genre": "demo", "year": 2026},
                )
                await insert_album(conn, album)
                mints.append((album.id, wallet))
    receipts = await send_many(
        rpc,
        minter,
        [
            (
                contract,
                encode_call(
                    mint_fn, wallet.address, album_id_to_bytes32(album_id), demo_uri(album_id)
                ),
            )
            for album_id, wallet in mints
        ],
    )
    token_of: dict[uuid.UUID, int] = {}
    for (album_id, _), receipt in zip(mints, receipts, strict=True):
        for entry in receipt["logs"]:
            if entry["topics"][0] == minted_topic:
                token_of[album_id] = int(entry["topics"][1], 16)
    async with pool.acquire() as conn:
        for album_id, _ in mints:
            # The indexer marks it `minted` when it sees AlbumMinted.
            await set_album_status(conn, album_id, "minting")

    sellers = [(token_of[album_id], wallet) for album_id, wallet in mints]
    await demo_trades(rpc, contract, sellers, wallets)


class DemoError(RuntimeError):
    """The API refused a demo request, or a demo mint did not complete."""


async def seed_demo_through_api(
    base_url: str,
    admin_token: str,
    rpc: RpcClient,
    contract: str,
    wallets: list[Signer],
    *,
    timeout: float = 120.0,
) -> int:
    """The demo catalog as a frontend makes it: artists and albums created and minted through
    the write API (the minter sends the transactions), then a few trades on chain.

    Returns how many albums were minted. Idempotency keys make a re-run after a crash harmless.
    """
    import asyncio
    import time

    import aiohttp

    headers = {"Authorization": f"Bearer {admin_token}"}
    mints: list[tuple[str, Signer]] = []
    async with aiohttp.ClientSession(base_url) as http:

        async def post(path: str, body: dict[str, object], key: str) -> dict[str, object]:
            async with http.post(
                path, json=body, headers=headers | {"Idempotency-Key": key}
            ) as response:
                answer: dict[str, object] = await response.json()
                if response.status >= 400:
                    raise DemoError(f"POST {path}: {response.status} {answer.get('detail')}")
                return answer

        for index, (artist_name, albums) in enumerate(DEMO_CATALOG):
            wallet = wallets[index]
            body: dict[str, object] = {"name": artist_name, "wallet": wallet.address}
            artist = await post("/artists", body, f"demo-artist-{index}")
            for title, songs in albums:
                album = {
                    "artist_id": artist["id"],
                    "title": title,
                    "tracks": [
                        {"position": position, "title": song, "duration_s": seconds}
                        for position, (song, seconds) in enumerate(songs, start=1)
                    ],
                    "metadata": {"genre": "demo", "year": 2026},
                }
                accepted = await post("/albums/mint", album, f"demo-album-{title}")
                mints.append((str(accepted["mint_id"]), wallet))
        token_of: dict[str, int] = {}
        deadline = time.monotonic() + timeout
        while len(token_of) < len(mints):
            for mint_id, _ in mints:
                if mint_id in token_of:
                    continue
                async with http.get(f"/mints/{mint_id}", headers=headers) as response:
                    mint = await response.json()
                if mint["status"] == "failed":
                    raise DemoError(f"demo mint {mint_id} failed: {mint['error']}")
                if mint["status"] in ("mined", "confirmed", "finalized"):
                    token_of[mint_id] = int(mint["token_id"])
            if time.monotonic() > deadline:
                raise DemoError(f"demo mints not mined within {timeout:.0f}s")
            await asyncio.sleep(0.2)

    await demo_trades(rpc, contract, [(token_of[m], seller) for m, seller in mints], wallets)
    return len(mints)


async def demo_trades(
    rpc: RpcClient, contract: str, minted: list[tuple[int, Signer]], wallets: list[Signer]
) -> None:
    """Two artists sell their first album to the fan; then the fan passes one on.

    `minted`: (token id, owner) of each demo album in catalog order."""
    transfer_fn = load_artifact(ARTIFACT_NAME).function("transferFrom")
    fan = wallets[len(DEMO_CATALOG)]
    first, second = minted[0], minted[2]
    for token, seller in (first, second):
        call = encode_call(transfer_fn, seller.address, fan.address, token)
        await send_many(rpc, seller, [(contract, call)])
    onward = wallets[len(DEMO_CATALOG) - 1].address
    await send_many(rpc, fan, [(contract, encode_call(transfer_fn, fan.address, onward, first[0]))])
