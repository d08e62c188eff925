"""Write routes: artists, albums, mint requests; auth, validation, idempotency (real Postgres)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest

from tests.conftest import TEST_JWT_SECRET

ARTIST_WALLET = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
OTHER_WALLET = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"


def token(sub: str, role: str = "artist", *, secret: str = TEST_JWT_SECRET, **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"sub": sub, "role": role, "iat": now, "exp": now + 600}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, secret, algorithm="HS256")


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


ADMIN = bearer(token("ops@example", "admin"))


async def new_artist(client: Any, name: str = "Nina", wallet: str | None = ARTIST_WALLET) -> str:
    body: dict[str, Any] = {"name": name}
    if wallet is not None:
        body["wallet"] = wallet
    response = await client.post("/artists", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def album_body(title: str = "Pastel Blues", tracks: int = 2) -> dict[str, Any]:
    return {
        "title": title,
        "tracks": [
            {"title": f"Track {i}", "duration_s": 180 + i, "isrc": f"USRC1760{7830 + i}"}
            for i in range(1, tracks + 1)
        ],
        "metadata": {"genre": "jazz"},
    }


async def counts(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        return {
            table: await conn.fetchval(f"SELECT count(*) FROM {table}")
            for table in ("artists", "albums", "tracks", "mint_requests", "idempotency_keys")
        }
    finally:
        await conn.close()


async def test_an_artist_creates_an_album_and_queues_its_mint(api_client: Any) -> None:
    artist = await new_artist(api_client)
    auth = bearer(token(artist))
    created = await api_client.post("/albums", json=album_body(), headers=auth)
    assert created.status_code == 201, created.text
    album = created.json()
    assert album["status"] == "draft"
    assert album["artist"] == {"id": artist, "name": "Nina", "wallet": ARTIST_WALLET}
    assert [t["position"] for t in album["tracks"]] == [1, 2]
    assert album["tracks"][0]["isrc"] == "USRC17607831"
    assert (await api_client.get(f"/albums/{album['id']}")).json() == album

    queued = await api_client.post(f"/albums/{album['id']}/mint", headers=auth)
    assert queued.status_code == 202, queued.text
    mint_id = queued.json()["mint_id"]
    assert queued.json()["status"] == "queued"
    mint = (await api_client.get(f"/mints/{mint_id}", headers=auth)).json()
    assert mint["status"] == "queued"
    assert mint["history"] == []  # nothing indexed: no chain id to announce `queued` on
    assert mint["to"] == ARTIST_WALLET
    assert mint["token_uri"].endswith(f"/albums/{album['id']}/metadata.json")
    assert (await api_client.get(f"/albums/{album['id']}")).json()["status"] == "minting"

    # One live mint per album: a second is refused, unless an admin re-mints.
    again = await api_client.post(f"/albums/{album['id']}/mint", headers=auth)
    assert again.status_code == 409
    assert again.json()["extra"]["mint_id"] == mint_id
    remint = await api_client.post(
        f"/albums/{album['id']}/mint", json={"remint": True, "to": OTHER_WALLET}, headers=ADMIN
    )
    assert remint.status_code == 202, remint.text
    assert (await api_client.get(f"/mints/{mint_id}", headers=ADMIN)).status_code == 200

    metadata = (await api_client.get(f"/albums/{album['id']}/metadata.json")).json()
    assert metadata["name"] == "Pastel Blues"
    assert [a["value"] for a in metadata["attributes"]] == ["Track 1", "Track 2"]


async def test_create_and_mint_in_one_call(api_client: Any) -> None:
    artist = await new_artist(api_client)
    body = album_body() | {"to": OTHER_WALLET, "token_uri": "ipfs://bafy-album"}
    response = await api_client.post("/albums/mint", json=body, headers=bearer(token(artist)))
    assert response.status_code == 202, response.text
    accepted = response.json()
    mint = (await api_client.get(f"/mints/{accepted['mint_id']}", headers=ADMIN)).json()
    assert mint["album_id"] == accepted["album_id"]
    assert mint["to"] == OTHER_WALLET
    assert mint["token_uri"] == "ipfs://bafy-album"


def _hs256_with(key: bytes, payload: dict[str, Any], header: dict[str, Any]) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64(signature)}"


async def test_auth_table(api_client: Any) -> None:
    artist = await new_artist(api_client)
    other = await new_artist(api_client, "Other", OTHER_WALLET)
    album = await api_client.post("/albums", json=album_body(), headers=bearer(token(artist)))
    album_id = album.json()["id"]
    now = int(time.time())
    unsigned = (
        base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
        + "."
        + base64.urlsafe_b64encode(
            json.dumps({"sub": artist, "role": "artist", "exp": now + 600}).encode()
        )
        .rstrip(b"=")
        .decode()
        + "."
    )
    cases: list[tuple[str, dict[str, str], int]] = [
        ("no token", {}, 401),
        ("not bearer", {"Authorization": "Basic dXNlcjpwYXNz"}, 401),
        ("garbage", bearer("not.a.jwt"), 401),
        ("expired", bearer(token(artist, exp=now - 3600)), 401),
        ("not yet valid", bearer(token(artist, nbf=now + 3600)), 401),
        ("issued in the future", bearer(token(artist, iat=now + 3600)), 401),
        (
            "wrong signature",
            bearer(token(artist, secret="another-secret-0123456789abcdef-0123")),
            401,
        ),
        ("alg none", bearer(unsigned), 401),
        ("no exp", bearer(token(artist, exp=None)), 401),
        ("no sub", bearer(jwt.encode({"role": "admin", "exp": now + 60}, TEST_JWT_SECRET)), 401),
        ("unknown role", bearer(token(artist, role="superuser")), 401),
        ("artist sub not a uuid", bearer(token("nina", "artist")), 401),
        ("artist creates an artist", bearer(token(artist)), 403),
        ("artist mints another's album", bearer(token(other)), 403),
        ("artist re-mints", bearer(token(artist)), 403),
    ]
    for name, headers, expected in cases:
        if name == "artist mints another's album":
            response = await api_client.post(f"/albums/{album_id}/mint", headers=headers)
        elif name == "artist re-mints":
            response = await api_client.post(
                f"/albums/{album_id}/mint", json={"remint": True}, headers=headers
            )
        else:
            response = await api_client.post("/artists", json={"name": "X"}, headers=headers)
        assert response.status_code == expected, (name, response.status_code, response.text)
        assert response.json()["status_code"] == expected, name
    # A token inside the clock-skew leeway (30 s) still works.
    skewed = bearer(token(artist, exp=now - 5))
    assert (
        await api_client.post("/albums", json=album_body("B"), headers=skewed)
    ).status_code == 201


async def test_rs256_rejects_algorithm_confusion_and_checks_audience(
    database_url: str, tmp_path: Any
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from litestar.testing import AsyncTestClient

    from api.app import create_app
    from discograph.settings import load_settings
    from tests.conftest import api_env

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_file = tmp_path / "jwt.pub"
    key_file.write_bytes(public_pem)
    env = api_env(
        database_url,
        JWT_ALGORITHM="RS256",
        JWT_PUBLIC_KEY_FILE=str(key_file),
        JWT_AUDIENCE="discograph",
        JWT_ISSUER="https://auth.example",
    )
    del env["JWT_SECRET"]
    settings = load_settings(env, env_file=None)
    now = int(time.time())
    claims = {"sub": "ops", "role": "admin", "exp": now + 600, "iat": now}
    good = {"aud": "discograph", "iss": "https://auth.example"}
    async with AsyncTestClient(app=create_app(settings, database_url)) as client:

        async def status(value: str) -> int:
            response = await client.post("/artists", json={"name": "A"}, headers=bearer(value))
            return int(response.status_code)

        assert await status(jwt.encode(claims | good, private, algorithm="RS256")) == 201
        confused = _hs256_with(public_pem, claims | good, {"alg": "HS256", "typ": "JWT"})
        assert await status(confused) == 401
        wrong_aud = claims | good | {"aud": "someone-else"}
        assert await status(jwt.encode(wrong_aud, private, algorithm="RS256")) == 401
        no_aud = claims | {"iss": "https://auth.example"}
        assert await status(jwt.encode(no_aud, private, algorithm="RS256")) == 401
        wrong_iss = claims | good | {"iss": "https://evil.example"}
        assert await status(jwt.encode(wrong_iss, private, algorithm="RS256")) == 401


async def test_without_a_jwt_secret_writes_answer_503(database_url: str) -> None:
    from litestar.testing import AsyncTestClient

    from api.app import create_app
    from discograph.settings import load_settings
    from tests.conftest import api_env

    env = api_env(database_url)
    del env["JWT_SECRET"]
    async with AsyncTestClient(
        app=create_app(load_settings(env, env_file=None), database_url)
    ) as c:
        response = await c.post("/artists", json={"name": "A"}, headers=ADMIN)
        assert response.status_code == 503
        assert "JWT_SECRET" in response.json()["detail"]
        assert (await c.get("/albums")).status_code == 200


BAD_ALBUMS: list[tuple[str, Any, str]] = [
    ("empty body", {}, "title"),
    ("no tracks", {"title": "A"}, "tracks"),
    ("title not a string", {"title": 5, "tracks": [{"title": "t"}]}, "title"),
    ("empty title", {"title": "", "tracks": [{"title": "t"}]}, "title"),
    ("blank title", {"title": "   ", "tracks": [{"title": "t"}]}, "title"),
    ("title too long", {"title": "x" * 201, "tracks": [{"title": "t"}]}, "title"),
    ("NUL in title", {"title": "a\u0000b", "tracks": [{"title": "t"}]}, "title"),
    ("control char", {"title": "a\u0007b", "tracks": [{"title": "t"}]}, "title"),
    ("tracks not a list", {"title": "A", "tracks": "t"}, "tracks"),
    ("zero tracks", {"title": "A", "tracks": []}, "tracks"),
    ("101 tracks", {"title": "A", "tracks": [{"title": "t"}] * 101}, "tracks"),
    ("track without title", {"title": "A", "tracks": [{}]}, "title"),
    ("track title too long", {"title": "A", "tracks": [{"title": "t" * 201}]}, "title"),
    ("NUL in track title", {"title": "A", "tracks": [{"title": "\u0000"}]}, "tracks[0].title"),
    ("duration zero", {"title": "A", "tracks": [{"title": "t", "duration_s": 0}]}, "duration_s"),
    ("negative duration", {"title": "A", "tracks": [{"title": "t", "duration_s": -3}]}, "duration"),
    (
        "duration a string",
        {"title": "A", "tracks": [{"title": "t", "duration_s": "3"}]},
        "duration",
    ),
    ("bad isrc", {"title": "A", "tracks": [{"title": "t", "isrc": "NOT-AN-ISRC!"}]}, "isrc"),
    (
        "isrc letters in year",
        {"title": "A", "tracks": [{"title": "t", "isrc": "USRC1AB07839"}]},
        "isrc",
    ),
    (
        "duplicate positions",
        {"title": "A", "tracks": [{"title": "t", "position": 1}, {"title": "u", "position": 1}]},
        "tracks",
    ),
    (
        "some positions",
        {"title": "A", "tracks": [{"title": "t", "position": 1}, {"title": "u"}]},
        "tracks",
    ),
    ("position zero", {"title": "A", "tracks": [{"title": "t", "position": 0}]}, "position"),
    ("unknown field", {"title": "A", "tracks": [{"title": "t"}], "price": 3}, "price"),
    (
        "metadata not an object",
        {"title": "A", "tracks": [{"title": "t"}], "metadata": [1]},
        "metadata",
    ),
    (
        "metadata too big",
        {"title": "A", "tracks": [{"title": "t"}], "metadata": {"x": "y" * 20_000}},
        "metadata",
    ),
    (
        "NUL in metadata",
        {"title": "A", "tracks": [{"title": "t"}], "metadata": {"x": "\u0000"}},
        "metadata",
    ),
    (
        "artist_id not a uuid",
        {"title": "A", "tracks": [{"title": "t"}], "artist_id": "x"},
        "artist_id",
    ),
]


async def test_bad_bodies_are_4xx_naming_the_field_and_write_nothing(
    api_client: Any, database_url: str
) -> None:
    artist = await new_artist(api_client)
    auth = bearer(token(artist))
    album_id = (await api_client.post("/albums", json=album_body(), headers=auth)).json()["id"]
    before = await counts(database_url)
    for name, body, field in BAD_ALBUMS:
        response = await api_client.post("/albums", json=body, headers=auth)
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
        assert field in response.text, (name, response.text)
    raw_cases: list[tuple[str, str, bytes, str]] = [
        ("/albums", "invalid JSON", b'{"title": ', ""),
        ("/albums", "lone surrogate", b'{"title": "\\ud800", "tracks": []}', "malformed"),
        (
            "/albums",
            "escaped NUL",
            b'{"title": "a\\u0000", "tracks": [{"title": "t"}]}',
            "title",
        ),
        ("/albums", "oversize body", b'{"title": "' + b"x" * (1024 * 1024 + 10) + b'"}', ""),
        (f"/albums/{album_id}/mint", "bad to", b'{"to": "0x1234"}', "to"),
        (
            f"/albums/{album_id}/mint",
            "bad checksum",
            b'{"to": "0x70997970c51812dc3A010C7d01b50e0d17dc79C8"}',
            "to",
        ),
        (
            f"/albums/{album_id}/mint",
            "bad uri scheme",
            b'{"token_uri": "javascript:alert(1)"}',
            "token_uri",
        ),
        (
            f"/albums/{album_id}/mint",
            "uri with spaces",
            b'{"token_uri": "https://a b"}',
            "token_uri",
        ),
        (f"/albums/{album_id}/mint", "remint not bool", b'{"remint": "yes"}', "remint"),
        (f"/albums/{album_id}/mint", "unknown mint field", b'{"amount": 2}', "amount"),
        ("/albums/not-a-uuid/mint", "album id not a uuid", b"{}", "album_id"),
        ("/artists", "artist bad wallet", b'{"name": "A", "wallet": "0xZZ"}', "wallet"),
        ("/artists", "artist empty name", b'{"name": ""}', "name"),
    ]
    for path, name, raw, field in raw_cases:
        headers = {**(ADMIN if path == "/artists" else auth), "Content-Type": "application/json"}
        response = await api_client.post(path, content=raw, headers=headers)
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
        assert field in response.text, (name, response.text)
    bad_key = await api_client.post(
        "/albums", json=album_body(), headers={**auth, "Idempotency-Key": "x" * 300}
    )
    assert bad_key.status_code == 400
    assert "Idempotency-Key" in bad_key.text
    missing = await api_client.post(f"/albums/{uuid.uuid4()}/mint", headers=auth)
    assert missing.status_code == 404
    assert len(BAD_ALBUMS) + len(raw_cases) >= 25
    assert await counts(database_url) == before


async def test_idempotency_key_replays_and_refuses_another_body(api_client: Any) -> None:
    artist = await new_artist(api_client)
    headers = bearer(token(artist)) | {"Idempotency-Key": "album-1"}
    first = await api_client.post("/albums", json=album_body(), headers=headers)
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    # The same body, written differently (key order), is the same request.
    body = album_body()
    reordered = {"metadata": body["metadata"], "tracks": body["tracks"], "title": body["title"]}
    again = await api_client.post("/albums", json=reordered, headers=headers)
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    other = await api_client.post("/albums", json=album_body("Other"), headers=headers)
    assert other.status_code == 422
    assert "Idempotency-Key" in other.text
    # Keys are per subject: another artist may use the same key.
    second_artist = await new_artist(api_client, "Second", OTHER_WALLET)
    headers2 = bearer(token(second_artist)) | {"Idempotency-Key": "album-1"}
    assert (
        await api_client.post("/albums", json=album_body(), headers=headers2)
    ).status_code == 201
    listed = (await api_client.get("/albums")).json()["items"]
    assert len(listed) == 2


async def test_one_key_sent_20_times_at_once_makes_one_mint(
    api_url: str, database_url: str
) -> None:
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            f"{api_url}/artists", json={"name": "N", "wallet": ARTIST_WALLET}, headers=ADMIN
        )
        artist = (await response.json())["id"]
        auth = bearer(token(artist))
        response = await http.post(f"{api_url}/albums", json=album_body(), headers=auth)
        album_id = (await response.json())["id"]
        headers = auth | {"Idempotency-Key": "mint-once"}

        async def attempt() -> tuple[int, dict[str, Any], str | None]:
            async with http.post(f"{api_url}/albums/{album_id}/mint", headers=headers) as r:
                return r.status, await r.json(), r.headers.get("Idempotent-Replayed")

        answers = await asyncio.gather(*(attempt() for _ in range(20)))
        statuses = sorted({status for status, _, _ in answers})
        assert set(statuses) <= {202, 409}, answers
        accepted = [body for status, body, _ in answers if status == 202]
        assert accepted, answers
        assert len({body["mint_id"] for body in accepted}) == 1
        replayed = [flag for status, _, flag in answers if status == 202 and flag == "true"]
        assert len(replayed) == len(accepted) - 1
        for status, body, _ in answers:
            if status == 409:
                assert body["status_code"] == 409
        # Later: the replay is the first answer; another body with the key → 422.
        async with http.post(f"{api_url}/albums/{album_id}/mint", headers=headers) as r:
            assert r.status == 202
            assert r.headers["Idempotent-Replayed"] == "true"
            assert (await r.json())["mint_id"] == accepted[0]["mint_id"]
        other = {"to": OTHER_WALLET}
        async with http.post(f"{api_url}/albums/{album_id}/mint", json=other, headers=headers) as r:
            assert r.status == 422
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM mint_requests") == 1
    finally:
        await conn.close()


@contextlib.contextmanager
def api_processes(env: dict[str, str], count: int, workdir: Path) -> Iterator[list[str]]:
    """`count` separate `discograph api` processes on free ports, with `env`."""
    from discograph.processes import ChildProcess, free_port
    from tests.conftest import REPO_ROOT

    urls, children = [], []
    try:
        for i in range(count):
            port = free_port()
            child_env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("TEST_")},
                **env,
                "HTTP_PORT": str(port),
                "LOG_LEVEL": "WARNING",
                "PYTHONPATH": str(REPO_ROOT),
            }
            argv = [sys.executable, "-m", "discograph.cli", "--env-file", "/dev/null", "api"]
            child = ChildProcess(
                f"api{i}", argv, log_path=workdir / f"api{i}.log", env=child_env, cwd=REPO_ROOT
            )
            children.append(child)
            url = f"http://127.0.0.1:{port}"
            child.wait_until(functools.partial(_answers, port), 30, "serving")
            urls.append(url)
        yield urls
    finally:
        for child in children:
            child.stop()


def _answers(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@pytest.mark.parametrize("kind", ["writes", "reads"])
async def test_rate_limits_are_shared_by_two_api_processes(
    database_url: str, redis_url: str, kind: str, tmp_path: Path
) -> None:
    from redis.asyncio import Redis

    from tests.conftest import api_env

    env = api_env(database_url, REDIS_URL=redis_url)
    env["RATE_LIMIT_WRITES" if kind == "writes" else "RATE_LIMIT_READS"] = "5/minute"
    # `discograph api` counts under a fixed namespace: start from an empty window (a shared
    # Redis may hold this address's reads from a run a moment ago).
    redis = Redis.from_url(redis_url)
    try:
        async for key in redis.scan_iter(match="LIMITS:LIMITER/discograph:responses:*"):
            await redis.delete(key)
    finally:
        await redis.aclose()
    admin = bearer(token(f"admin-{uuid.uuid4()}", "admin"))
    with api_processes(env, 2, tmp_path) as (first, second):
        async with aiohttp.ClientSession() as http:
            statuses = []
            for i in range(7):
                base = first if i % 2 == 0 else second
                if kind == "writes":
                    request = http.post(f"{base}/artists", json={"name": f"A{i}"}, headers=admin)
                else:
                    request = http.get(f"{base}/albums")
                async with request as r:
                    statuses.append(r.status)
                    if r.status != 429:
                        assert r.headers["RateLimit-Limit"] == "5"
                        remaining = int(r.headers["RateLimit-Remaining"])
                        assert remaining == 5 - len(statuses)
                    else:
                        assert int(r.headers["Retry-After"]) >= 1
                        assert (await r.json())["status_code"] == 429
            ok = 201 if kind == "writes" else 200
            assert statuses == [ok] * 5 + [429, 429]
            if kind == "writes":
                # Another subject has its own budget.
                other = bearer(token("other-admin", "admin"))
                async with http.post(f"{first}/artists", json={"name": "B"}, headers=other) as r:
                    assert r.status == 201


async def test_idempotency_keys_expire_after_a_day(api_client: Any, pool: asyncpg.Pool) -> None:
    from api.idempotency import prune

    artist = await new_artist(api_client)
    headers = bearer(token(artist)) | {"Idempotency-Key": "old"}
    assert (await api_client.post("/albums", json=album_body(), headers=headers)).status_code == 201
    headers_new = bearer(token(artist)) | {"Idempotency-Key": "new"}
    body = album_body("New")
    assert (await api_client.post("/albums", json=body, headers=headers_new)).status_code == 201
    await pool.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'old'"
    )
    assert await prune(pool) == 1
    assert await pool.fetchval("SELECT array_agg(key) FROM idempotency_keys") == ["new"]


async def _artist_album_and_mint(http: aiohttp.ClientSession) -> tuple[dict[str, str], str, str]:
    async with http.post(
        "/artists", json={"name": "N", "wallet": ARTIST_WALLET}, headers=ADMIN
    ) as r:
        artist = (await r.json())["id"]
    auth = bearer(token(artist))
    async with http.post("/albums", json=album_body(), headers=auth) as r:
        album = (await r.json())["id"]
    async with http.post(f"/albums/{album}/mint", headers=auth) as r:
        assert r.status == 202
        mint = (await r.json())["mint_id"]
    return auth, album, mint


async def test_a_burst_of_duplicate_mints_is_refused_without_exhausting_the_pool(
    api_url: str,
) -> None:
    """More concurrent duplicates than the pool has connections: each is a quick 409, and the
    API still answers afterwards (the refusal needs no second connection)."""
    async with aiohttp.ClientSession(api_url, timeout=aiohttp.ClientTimeout(total=15)) as http:
        auth, album, mint = await _artist_album_and_mint(http)

        async def duplicate() -> tuple[int, Any]:
            async with http.post(f"/albums/{album}/mint", headers=auth) as r:
                return r.status, await r.json()

        answers = await asyncio.gather(*(duplicate() for _ in range(16)))
        assert [status for status, _ in answers] == [409] * 16
        assert {body["extra"]["mint_id"] for _, body in answers} == {mint}
        async with http.get(f"/albums/{album}") as r:
            assert r.status == 200


async def test_a_mint_request_waits_for_the_minter_failing_the_previous_one(
    api_url: str, database_url: str
) -> None:
    """The minter and the API lock in the same order (album, mint rows, outbox): a request to
    mint again while the minter is failing the album's previous mint waits, then succeeds."""
    from minter.transitions import Failure, lock_albums, record_failures

    async with aiohttp.ClientSession(api_url, timeout=aiohttp.ClientTimeout(total=15)) as http:
        auth, album, mint = await _artist_album_and_mint(http)
        minter = await asyncpg.connect(database_url)
        try:
            transaction = minter.transaction()
            await transaction.start()
            await lock_albums(minter, [uuid.UUID(album)])
            await record_failures(minter, 31337, [Failure(uuid.UUID(mint), "queued", "test")])
            again = asyncio.create_task(http.post(f"/albums/{album}/mint", headers=auth))
            await asyncio.sleep(0.5)
            assert not again.done()  # waiting for the album's lock
            await transaction.commit()
            response = await again
            assert response.status == 202, await response.text()
            assert (await response.json())["mint_id"] != mint
        finally:
            await minter.close()
        async with http.get(f"/albums/{album}") as r:
            assert (await r.json())["status"] == "minting"


async def test_a_re_mint_leaves_a_minted_album_minted(api_client: Any, pool: asyncpg.Pool) -> None:
    artist = await new_artist(api_client)
    auth = bearer(token(artist))
    album = (await api_client.post("/albums", json=album_body(), headers=auth)).json()["id"]
    assert (await api_client.post(f"/albums/{album}/mint", headers=auth)).status_code == 202
    await pool.execute("UPDATE albums SET status = 'minted'")
    await pool.execute("UPDATE mint_requests SET status = 'finalized'")
    remint = await api_client.post(f"/albums/{album}/mint", json={"remint": True}, headers=ADMIN)
    assert remint.status_code == 202
    assert (await api_client.get(f"/albums/{album}")).json()["status"] == "minted"


async def test_nfc_growth_and_key_reuse_after_expiry_are_4xx(
    api_client: Any, pool: asyncpg.Pool
) -> None:
    grows = await api_client.post("/artists", json={"name": "\u0958" * 200}, headers=ADMIN)
    assert grows.status_code == 400
    assert "name" in grows.text
    artist = await new_artist(api_client)
    auth = bearer(token(artist))
    body = album_body() | {"title": "\ufb2c" * 110}
    assert (await api_client.post("/albums", json=body, headers=auth)).status_code == 400
    first = (await api_client.post("/albums", json=album_body(), headers=auth)).json()["id"]
    second = (await api_client.post("/albums", json=album_body("B"), headers=auth)).json()["id"]
    keyed = auth | {"Idempotency-Key": "mint-key"}
    assert (await api_client.post(f"/albums/{first}/mint", headers=keyed)).status_code == 202
    await pool.execute("DELETE FROM idempotency_keys")  # as a day later
    reused = await api_client.post(f"/albums/{second}/mint", headers=keyed)
    assert reused.status_code == 422
    assert "Idempotency-Key" in reused.text


async def test_no_default_token_uri_without_a_reachable_public_url(database_url: str) -> None:
    from litestar.testing import AsyncTestClient

    from api.app import create_app
    from discograph.settings import load_settings
    from tests.conftest import api_env

    settings = load_settings(api_env(database_url, HTTP_HOST="0.0.0.0"), env_file=None)  # noqa: S104
    async with AsyncTestClient(app=create_app(settings, database_url)) as client:
        artist = await new_artist(client)
        auth = bearer(token(artist))
        album = (await client.post("/albums", json=album_body(), headers=auth)).json()["id"]
        refused = await client.post(f"/albums/{album}/mint", headers=auth)
        assert refused.status_code == 422
        assert "PUBLIC_URL" in refused.text
        given = await client.post(
            f"/albums/{album}/mint", json={"token_uri": "ipfs://bafy"}, headers=auth
        )
        assert given.status_code == 202
