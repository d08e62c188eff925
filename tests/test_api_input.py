"""Hostile input on every route: nested JSON, tampered cursors, cache keys, token rules."""

from __future__ import annotations

import base64
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import asyncpg
import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar import Request

from api.cache import cache_key
from tests.conftest import TEST_JWT_SECRET
from tests.test_api_writes import album_body, bearer, new_artist, token

CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
OWNER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def paginated_routes(artist: str) -> list[str]:
    return [
        "/transfers",
        f"/nfts/{CONTRACT}/1/transfers",
        f"/owners/{OWNER}/nfts",
        f"/contracts/{CONTRACT}/holders",
        "/albums",
        f"/artists/{artist}/albums",
    ]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def nested(depth: int) -> bytes:
    """A JSON object `depth` levels deep (as text: the client's encoder would recurse)."""
    return b'{"a":' * (depth - 1) + b'{"leaf":1}' + b"}" * (depth - 1)


def with_metadata(body: dict[str, Any], metadata: bytes) -> bytes:
    return json.dumps(body | {"metadata": "@"}).encode().replace(b'"@"', metadata)


JSON = {"Content-Type": "application/json"}


def assert_names(response: Any, field: str, status: int = 400) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status_code"] == status
    assert [e["key"] for e in body["extra"]] == [field], body


@contextlib.contextmanager
def sys_recursion(limit: int) -> Iterator[None]:
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(limit)
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


@pytest.fixture
def production_recursion_limit() -> Iterator[None]:
    """Python's default (the test runner raises it to 100,000, where msgspec decoding this
    deep overflows the C stack instead: a crash of the whole process, not a RecursionError)."""
    with sys_recursion(1000):
        yield


@pytest.mark.usefixtures("production_recursion_limit")
async def test_a_deeply_nested_cursor_is_a_400_on_every_paginated_route(api_client: Any) -> None:
    artist = await new_artist(api_client)
    for raw in (b"[" * 1000, b"[" * 10_000, b'{"a":' * 2000):
        for route in paginated_routes(artist):
            response = await api_client.get(route, params={"cursor": _b64(raw)})
            assert_names(response, "cursor")


@pytest.mark.usefixtures("production_recursion_limit")
async def test_a_deeply_nested_metadata_is_a_400_naming_metadata(api_client: Any) -> None:
    artist = bearer(token(await new_artist(api_client)))
    for route, extra in (("/albums", {}), ("/albums/mint", {"to": OWNER})):
        for depth in (17, 40, 1_000, 10_000):
            body = with_metadata(album_body() | extra, nested(depth))
            response = await api_client.post(route, content=body, headers=artist | JSON)
            assert_names(response, "metadata")
        body = with_metadata(album_body() | extra, nested(16))
        response = await api_client.post(route, content=body, headers=artist | JSON)
        assert response.status_code < 300, response.text
    # Any other field nested past the body's limit is named too, and never a 500.
    deep: Any = []
    for _ in range(34):
        deep = [deep]
    deep_tracks = album_body() | {"tracks": deep}
    assert_names(await api_client.post("/albums", json=deep_tracks, headers=artist), "tracks")
    raw = b'{"title": "x", "metadata": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    response = await api_client.post("/albums", content=raw, headers=artist | JSON)
    assert_names(response, "metadata")


async def test_only_a_cursor_the_api_issued_for_that_route_is_accepted(api_client: Any) -> None:
    artist = await new_artist(api_client)
    auth = bearer(token(artist))
    for title in ("One", "Two", "Three"):
        assert (await api_client.post("/albums", json=album_body(title), headers=auth)).is_success
    first = await api_client.get("/albums", params={"limit": 1})
    issued = first.json()["next_cursor"]
    assert issued
    good = await api_client.get("/albums", params={"limit": 1, "cursor": issued})
    assert good.status_code == 200, good.text
    last = issued[-1]
    other_last = "A" if last != "A" else "B"
    tampered = [
        issued + "!!!!",
        issued + " * *",
        issued + "=",
        issued + "==",
        " " + issued,
        issued + "\n",
        issued[:-1] + other_last,  # the same bytes with other padding bits, or other bytes
        issued + "A",
        issued * 20,
        "",
        "A" * 5000,
        _b64(b'[1, "x"]'),
    ]
    for cursor in tampered:
        response = await api_client.get("/albums", params={"limit": 1, "cursor": cursor})
        assert_names(response, "cursor")
    # Another route's cursor, though it has the same shape, is not this route's.
    response = await api_client.get(f"/artists/{artist}/albums", params={"cursor": issued})
    assert_names(response, "cursor")


async def test_a_cursor_from_the_issue_report_is_refused(api_client: Any) -> None:
    for cursor in ("WzIyNCwwXQ!!!!", "WzIyNCwwXQ * *", "WzIyNCwwXQ==", "WzIyNCwwXQ"):
        assert_names(await api_client.get("/transfers", params={"cursor": cursor}), "cursor")


def _request(path: str, query: str, version: str = "9:abcd:0") -> Request[Any, Any, Any]:
    scope: Any = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "headers": [],
        "query_string": query.encode(),
        "state": {"cache_version": version},
    }
    return Request(scope)


def test_cache_keys_of_escaped_separators_differ() -> None:
    escaped = cache_key(_request("/transfers", "cursor=X%3D%3D%26limit%3D5"))
    plain = cache_key(_request("/transfers", "cursor=X==&limit=5"))
    assert escaped != plain
    # Order is not part of the request's meaning: the same parameters share a key.
    assert cache_key(_request("/t", "a=1&b=2")) == cache_key(_request("/t", "b=2&a=1"))
    assert cache_key(_request("/t", "a=1")) != cache_key(_request("/t", "a=1", "10:abcd:0"))
    assert cache_key(_request("/t", "a=1&min_block=3")) == cache_key(_request("/t", "a=1"))


# Few atoms, most of them separators: a naive encoding's collisions are found at once.
_atoms = st.sampled_from(["", "a", "=", "&", "a=", "=a", "&a", "a&", "=&", "%26", "?", "@", "é"])
_text = st.lists(_atoms, max_size=3).map("".join) | st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8
)
_requests = st.lists(
    st.tuples(_text, st.lists(st.tuples(_text, _text), max_size=3)), min_size=2, max_size=12
)


@settings(max_examples=300, deadline=None)
@given(requests=_requests)
def test_no_two_distinct_parameter_multisets_share_a_cache_key(
    requests: list[tuple[str, list[tuple[str, str]]]],
) -> None:
    meaning: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    for path, pairs in requests:
        request = _request("/" + path, urlencode(pairs))
        # What the route sees: the decoded path and the multiset of decoded parameters.
        seen = (
            request.url.path,
            sorted((k, v) for k, v in request.query_params.multi_items() if k != "min_block"),
        )
        assert meaning.setdefault(cache_key(request), seen) == seen


_separators = st.text(alphabet="a=&", max_size=4)


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(_separators, max_size=8))
def test_parameters_that_concatenate_alike_still_have_distinct_keys(parts: list[str]) -> None:
    """Pairs whose text, joined with `&` and `=`, reads back as other pairs."""
    pairs = list(zip(parts[0::2], parts[1::2], strict=False))
    joined = "&".join(f"{k}={v}" for k, v in pairs)
    resplit = [(k, v) for k, _, v in (p.partition("=") for p in joined.split("&"))]
    a, b = _request("/t", urlencode(pairs)), _request("/t", urlencode(resplit))
    same = sorted(a.query_params.multi_items()) == sorted(b.query_params.multi_items())
    assert (cache_key(a) == cache_key(b)) == same


def _claims(**claims: Any) -> str:
    return jwt.encode(claims, TEST_JWT_SECRET, algorithm="HS256")


async def test_a_token_without_iat_authenticates(api_client: Any) -> None:
    now = int(time.time())
    no_iat = _claims(sub="ops@example", role="admin", exp=now + 600)
    response = await api_client.post("/artists", json={"name": "Ada"}, headers=bearer(no_iat))
    assert response.status_code == 201, response.text
    # When present, iat and nbf are still checked.
    future = _claims(sub="ops@example", role="admin", exp=now + 600, iat=now + 3600)
    response = await api_client.post("/artists", json={"name": "Ada"}, headers=bearer(future))
    assert response.status_code == 401


async def test_only_the_bearer_scheme_authenticates(api_client: Any) -> None:
    valid = token("ops@example", "admin")
    refused = [
        f"Token {valid}",
        f"JWT {valid}",
        f"Basic {valid}",
        f"Bearer{valid}",
        valid,
        "Bearer ",
        "Bearer",
    ]
    for header in refused:
        response = await api_client.post(
            "/artists", json={"name": "Ada"}, headers={"Authorization": header}
        )
        assert response.status_code == 401, (header[:20], response.text)
        assert response.json()["status_code"] == 401
    for scheme in ("Bearer", "bearer", "BEARER"):
        response = await api_client.post(
            "/artists", json={"name": "Ada"}, headers={"Authorization": f"{scheme} {valid}"}
        )
        assert response.status_code == 201, (scheme, response.text)


def test_the_feed_accepts_a_token_without_iat_and_refuses_other_schemes(database_url: str) -> None:
    from api.auth import TokenRefused, bearer_token, token_verifier
    from discograph.settings import load_settings
    from tests.conftest import api_env

    verify = token_verifier(load_settings(api_env(database_url), env_file=None))
    now = int(time.time())
    principal = verify(_claims(sub="ops@example", role="admin", exp=now + 600))
    assert principal.is_admin
    try:
        verify(_claims(sub="ops@example", role="admin", exp=now + 600, nbf=now + 3600))
    except TokenRefused:
        pass
    else:
        raise AssertionError("a token not valid yet was accepted")
    assert bearer_token("bearer abc") == "abc"
    assert bearer_token("Token abc") is None
    assert bearer_token("Bearer") is None


def malformed_reads(artist: str, album: str) -> list[tuple[str, str]]:
    """(method, url) pairs that must each be a JSON 4xx."""
    deep = _b64(b"[" * 1000)
    lists = paginated_routes(artist)
    ones = [
        f"/nfts/{CONTRACT}/1",
        f"/albums/{album}",
        f"/albums/{album}/metadata.json",
    ]
    bad_queries = [
        f"cursor={deep}",
        "cursor=WzIyNCwwXQ!!!!",
        "cursor=WzIyNCwwXQ%20*%20*",
        "cursor=" + "A" * 300,
        "cursor=%00",
        "cursor=%FF%FE",
        "cursor=a&cursor=b",
        "limit=1&limit=2",
        "limit=5&limit=5",
        "limit=abc",
        "limit=0",
        "limit=201",
        "limit=1.5",
        "limit=-1",
        "limit=" + "9" * 40,
        "limit=",
        "bogus=1",
        "min_block=abc",
        "min_block=-1",
        "min_block=" + "9" * 30,
    ]
    reads = [("GET", f"{route}?{q}") for route in lists for q in bad_queries]
    reads += [
        ("GET", f"{route}?{q}")
        for route in (
            f"/nfts/{CONTRACT}/1",
            f"/owners/{OWNER}/nfts",
            f"/contracts/{CONTRACT}/holders",
        )
        for q in (
            "at_block=-1",
            "at_block=abc",
            f"at_block={2**64}",
            "finality=bogus",
            "at_block=1&finality=safe",
            "finality=",
        )
    ]
    reads += [
        ("GET", f"/transfers?{q}")
        for q in (
            "contract=0xnope",
            "address=zz",
            "token_id=1",
            f"contract={CONTRACT}&token_id=-1",
            f"contract={CONTRACT}&token_id={2**256}",
            "from_block=x",
            "to_block=-5",
            f"from_block={2**63}",
        )
    ]
    reads += [
        ("GET", path)
        for path in (
            "/nfts/0xnope/1",
            f"/nfts/{CONTRACT}/0x1",
            f"/nfts/{CONTRACT}/{'9' * 100}",
            f"/nfts/{CONTRACT.lower()[:-1]}Z/1/transfers",
            "/owners/0x123/nfts",
            "/contracts/nope/holders",
            "/albums/not-a-uuid",
            "/albums/not-a-uuid/metadata.json",
            "/artists/not-a-uuid/albums",
            "/mints/not-a-uuid",
            "/no/such/route",
        )
    ]
    reads += [(method, route) for route in lists + ones for method in ("PUT", "DELETE", "PATCH")]
    return reads


async def test_hundreds_of_malformed_requests_are_json_4xx_without_an_error_log(
    api_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    artist = await new_artist(api_client)
    auth = bearer(token(artist))
    created = await api_client.post("/albums", json=album_body(), headers=auth)
    album = created.json()["id"]
    # Minted already: an empty (valid) mint body is a 409 too.
    minted = await api_client.post(f"/albums/{album}/mint", json={"to": OWNER}, headers=auth)
    assert minted.status_code == 202, minted.text
    bodies: list[bytes] = [
        b"",
        b"null",
        b"[]",
        b'"x"',
        b"{",
        b"{]",
        b"\xff\xfe",
        b"[" * 10_000,
        b'{"title":' + b"[" * 10_000,
        with_metadata(album_body(), nested(1_000)),
        with_metadata(album_body(), b'"not an object"'),
        with_metadata(album_body(), b"[1,2]"),
        json.dumps(album_body() | {"title": 5}).encode(),
        json.dumps(album_body() | {"tracks": "none"}).encode(),
        json.dumps(album_body() | {"tracks": [{"title": "t", "duration_s": "3"}]}).encode(),
        json.dumps(album_body() | {"unknown": 1}).encode(),
        json.dumps(album_body() | {"metadata": {"x": "a" * 20_000}}).encode(),
        json.dumps(album_body() | {"artist_id": "nope"}).encode(),
    ]
    writes = [
        ("POST", route, body)
        for route in ("/albums", "/albums/mint", f"/albums/{album}/mint", "/artists")
        for body in bodies
    ]
    requests: list[tuple[str, str, bytes | None]] = [
        (m, u, None) for m, u in malformed_reads(artist, album)
    ] + writes
    assert len(requests) >= 200
    caplog.set_level("ERROR")
    with sys_recursion(1000):
        for method, url, body in requests:
            headers = auth | JSON if body is not None else {}
            response = await api_client.request(method, url, content=body, headers=headers)
            assert 400 <= response.status_code < 500, (
                method,
                url,
                body and body[:60],
                response.text,
            )
            assert response.json()["status_code"] == response.status_code, (method, url)
    errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert not errors, [r.getMessage() for r in errors]


async def _indexed_at(database_url: str, block: int) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO checkpoints (chain_id, block_number, block_hash)"
            " VALUES (31337, $1, decode(repeat('33', 32), 'hex'))",
            block,
        )
    finally:
        await conn.close()


async def test_min_block_is_parsed_like_every_other_parameter(
    api_client: Any, database_url: str
) -> None:
    await _indexed_at(database_url, 5)
    encoded = await api_client.get("/transfers?min_block=%35")  # 5, percent-encoded
    assert encoded.status_code == 200, encoded.text
    for query in (
        "min_block=1&min_block=abc",
        "min_block=abc&min_block=1",
        "min_block=1&min_block=1",
    ):
        response = await api_client.get(f"/transfers?{query}")
        assert_names(response, "min_block")
        assert response.headers["x-indexed-block"] == "5"


async def test_error_answers_carry_x_indexed_block(api_client: Any, database_url: str) -> None:
    await _indexed_at(database_url, 7)
    answers = [
        await api_client.get("/transfers?min_block=abc"),
        await api_client.get("/no/such/route"),
        await api_client.put("/transfers"),
        await api_client.delete(f"/nfts/{CONTRACT}/1"),
        await api_client.get("/transfers?limit=0"),
    ]
    for response in answers:
        assert 400 <= response.status_code < 500
        assert response.json()["status_code"] == response.status_code
        assert response.headers.get("x-indexed-block") == "7", (response.status_code, response.text)
    live = await api_client.get("/health/live")
    assert "x-indexed-block" not in live.headers


async def test_head_on_read_routes_answers_like_get_without_a_body(
    api_client: Any, database_url: str
) -> None:
    await _indexed_at(database_url, 3)
    artist = await new_artist(api_client)
    created = await api_client.post("/albums", json=album_body(), headers=bearer(token(artist)))
    album = created.json()["id"]
    routes = [
        *paginated_routes(artist),
        f"/nfts/{CONTRACT}/1",
        f"/albums/{album}",
        f"/albums/{album}/metadata.json",
    ]
    for route in routes:
        got = await api_client.get(route)
        head = await api_client.head(route)
        assert head.status_code == got.status_code, (route, head.status_code)
        assert head.content == b""
        assert head.headers["x-indexed-block"] == "3"
    # HEAD skips Litestar's JWT middleware: no write route answers it.
    assert (await api_client.head(f"/mints/{album}")).status_code == 405
