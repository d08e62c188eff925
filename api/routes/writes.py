"""Write routes (JWT bearer): artists, albums, mint requests and their status.

The API only inserts catalog rows and queues mint requests; the minter (the only key holder)
sends them. Every POST takes an `Idempotency-Key` (see `api.idempotency`), and every answer
is either the whole change or nothing: one transaction per request.
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, TypeVar

import asyncpg
import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.exceptions import (
    HTTPException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import HeaderParameter, JSONBody, PathParameter
from litestar.status_codes import (
    HTTP_201_CREATED,
    HTTP_202_ACCEPTED,
    HTTP_409_CONFLICT,
)

from api import params
from api.album_schemas import Album
from api.auth import Principal
from api.bodies import json_depth
from api.idempotency import HEADER as IDEMPOTENCY_HEADER
from api.idempotency import Work, parse_key, run_once
from api.routes.albums import assemble_albums
from api.write_schemas import (
    Artist,
    Mint,
    MintAccepted,
    MintEvent,
    MintOptions,
    NewAlbum,
    NewAlbumMint,
    NewArtist,
    NewTrack,
)
from db import catalog, catalog_reads
from db.mints import HOLDS_ALBUM, announce_mint, get_mint, insert_mint_request, mint_history
from discograph.encoding import checksum_address, hex0x_or_none

T = TypeVar("T")
UuidPath = Annotated[str, PathParameter(description="UUID")]
MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 16  # levels of objects and arrays, the metadata object included
URI_SCHEMES = ("https://", "http://", "ipfs://", "ar://")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name=IDEMPOTENCY_HEADER,
        required=False,
        description="Makes the POST safe to retry: the same key and body replay the first "
        "answer (`Idempotent-Replayed: true`); another body → 422; still running → 409",
        examples=[Example(value="3b1f6c1e-5f0e-4a43-9a51-1d1d7a0e9b8e")],
    ),
]


def _bad(field: str, message: str, status: int = 400) -> HTTPException:
    extra = [{"key": field, "message": message, "source": "body"}]
    if status == 400:
        return ValidationException(detail=f"Invalid {field}: {message}", extra=extra)
    return HTTPException(status_code=status, detail=f"Invalid {field}: {message}", extra=extra)


def clean_text(field: str, value: str, max_length: int = 200) -> str:
    """NFC-normalised text without control characters or lone surrogates, not blank, at most
    `max_length` characters once normalised (NFC can lengthen text: U+FB2C becomes three)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(field, "is not valid Unicode (lone surrogate)") from None
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise _bad(field, "must not contain control characters")
    value = unicodedata.normalize("NFC", value)
    if not value.strip():
        raise _bad(field, "must not be blank")
    if len(value) > max_length:
        raise _bad(field, f"is longer than {max_length} characters once NFC-normalised")
    return value


def clean_isrc(field: str, value: str) -> str:
    isrc = value.replace("-", "").upper()
    if not (
        len(isrc) == 12
        and isrc[:2].isalpha()
        and isrc[2:5].isalnum()
        and isrc[5:].isdigit()
        and isrc.isascii()
    ):
        raise _bad(field, "is not an ISRC (CC-XXX-YY-NNNNN)")
    return isrc


def clean_uri(field: str, value: str) -> str:
    clean_text(field, value, max_length=2048)
    if not value.startswith(URI_SCHEMES) or any(ch.isspace() for ch in value):
        raise _bad(field, f"must be a URI starting with one of {', '.join(URI_SCHEMES)}")
    if value.endswith("://"):
        raise _bad(field, "has nothing after the scheme")
    return value


def clean_address(field: str, value: str) -> bytes:
    try:
        return params.address(field, value)
    except HTTPException as exc:
        message = exc.detail.removeprefix(f"Invalid {field}: ")
        raise _bad(field, message, exc.status_code) from None


def clean_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """At most MAX_METADATA_BYTES of JSON nested at most MAX_METADATA_DEPTH levels, and no NUL
    (Postgres' jsonb refuses it). The body parser already refused anything that is not valid
    Unicode or nested deeper than the body's limit (`api.bodies`)."""
    encoded = msgspec.json.encode(value)
    if len(encoded) > MAX_METADATA_BYTES:
        raise _bad("metadata", f"is larger than {MAX_METADATA_BYTES} bytes of JSON")
    if json_depth(encoded) > MAX_METADATA_DEPTH:
        raise _bad("metadata", f"is nested deeper than {MAX_METADATA_DEPTH} levels")
    if b"\\u0000" in encoded:
        raise _bad("metadata", "must not contain NUL characters")
    return value


def clean_tracks(tracks: Sequence[NewTrack]) -> list[catalog.NewTrack]:
    given = [t.position is not None for t in tracks]
    if any(given) and not all(given):
        raise _bad("tracks", "give every track a position, or none (then they are 1..n)")
    positions = [t.position or i for i, t in enumerate(tracks, start=1)]
    if len(set(positions)) != len(positions):
        raise _bad("tracks", "positions must be unique")
    return [
        catalog.NewTrack(
            position=position,
            title=clean_text(f"tracks[{i}].title", t.title),
            duration_s=t.duration_s,
            isrc=clean_isrc(f"tracks[{i}].isrc", t.isrc) if t.isrc is not None else None,
        )
        for i, (t, position) in enumerate(zip(tracks, positions, strict=True))
    ]


async def strict(request: Request[Any, Any, Any], data: T) -> T:
    """The body again, decoded strictly: Litestar converts bodies leniently ("3" would pass as
    a duration), while a write takes JSON types as they are."""
    try:
        return msgspec.json.decode(await request.body(), type=type(data), strict=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        _, _, where = message.rpartition(" - at `$.")
        field = where.rstrip("`") or "body"
        raise _bad(field, message.split(" - at ")[0]) from None


async def _once(
    request: Request[Any, Any, Any],
    principal: Principal,
    idempotency_key: str | None,
    body: Any,
    work: Work,
) -> Response[bytes]:
    """`work` in one transaction, at most once per the caller's `Idempotency-Key`."""
    return await run_once(
        request.app.state.pool,
        subject=principal.subject,
        key=parse_key(idempotency_key),
        method=request.method,
        path=request.url.path,
        body=msgspec.to_builtins(body),
        work=work,
    )


def _principal(request: Request[Any, Any, Any]) -> Principal:
    user = request.user
    assert isinstance(user, Principal)  # the JWT middleware authenticated the request
    return user


async def _artist_of(
    conn: asyncpg.Connection, principal: Principal, artist_id: uuid.UUID | None
) -> uuid.UUID:
    """The artist a new album belongs to: the caller's, or the one an admin names."""
    if principal.is_admin:
        if artist_id is None:
            raise _bad("artist_id", "is required when an admin creates an album", 422)
        if not await catalog_reads.artist_exists(conn, artist_id):
            raise _bad("artist_id", f"no artist {artist_id}", 422)
        return artist_id
    assert principal.artist_id is not None
    if artist_id is not None and artist_id != principal.artist_id:
        raise PermissionDeniedException(detail="artists create albums for themselves only")
    if not await catalog_reads.artist_exists(conn, principal.artist_id):
        raise PermissionDeniedException(detail=f"no artist {principal.artist_id} (token sub)")
    return principal.artist_id


async def _create_album(
    conn: asyncpg.Connection, principal: Principal, data: NewAlbum | NewAlbumMint
) -> uuid.UUID:
    album = catalog.NewAlbum(
        artist_id=await _artist_of(conn, principal, data.artist_id),
        title=clean_text("title", data.title),
        tracks=clean_tracks(data.tracks),
        metadata=clean_metadata(data.metadata),
    )
    return await catalog.insert_album(conn, album)


async def _album_view(conn: asyncpg.Connection, album_id: uuid.UUID, view: Any) -> Album:
    row = await catalog_reads.album(conn, album_id)
    assert row is not None
    (album,) = await assemble_albums(conn, [row], view)
    return album


async def _queue_mint(
    request: Request[Any, Any, Any],
    conn: asyncpg.Connection,
    principal: Principal,
    album_id: uuid.UUID,
    *,
    to: str | None,
    token_uri: str | None,
    remint: bool,
) -> MintAccepted:
    """Queue a mint of `album_id` (inside the caller's transaction)."""
    album = await conn.fetchrow(
        "SELECT a.id, a.artist_id, ar.wallet FROM albums a JOIN artists ar ON ar.id = a.artist_id"
        " WHERE a.id = $1 FOR UPDATE OF a",
        album_id,
    )
    if album is None:
        raise NotFoundException(detail=f"album {album_id} not found")
    if not principal.is_admin and album["artist_id"] != principal.artist_id:
        raise PermissionDeniedException(detail="artists mint their own albums only")
    if remint and not principal.is_admin:
        raise PermissionDeniedException(detail="a re-mint needs the admin role")
    if to is not None:
        recipient = clean_address("to", to)
    elif album["wallet"] is not None:
        recipient = bytes(album["wallet"])
    else:
        raise _bad("to", "is required: the artist has no wallet", 422)
    if token_uri is None:
        token_uri = _default_token_uri(request, album_id)
    else:
        token_uri = clean_uri("token_uri", token_uri)
    if not remint:
        # Under the album's row lock, so this answer cannot race another request's insert.
        live = await conn.fetchval(
            f"SELECT id FROM mint_requests WHERE album_id = $1 AND {HOLDS_ALBUM}", album_id
        )
        if live is not None:
            raise HTTPException(
                status_code=HTTP_409_CONFLICT,
                detail=f"album {album_id} is already minted or being minted"
                " (an admin may re-mint with remint: true)",
                extra={"mint_id": str(live)},
            )
    key = request.headers.get(IDEMPOTENCY_HEADER)
    view = request.state.chain_view
    chain_id = int(view["chain_id"]) if view is not None else request.app.state.settings.chain_id
    try:
        async with conn.transaction():  # a savepoint: a refused insert leaves the rest usable
            row = await insert_mint_request(
                conn,
                album_id=album_id,
                requester=principal.subject,
                to_address=recipient,
                token_uri=token_uri,
                idempotency_key=key,
                remint=remint,
                chain_id=chain_id,
            )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "uq_mint_requests_requester_idempotency_key":
            # The key outlived its replay window (a day) but still names an earlier mint.
            raise _bad(
                IDEMPOTENCY_HEADER, f"{key!r} already named an earlier mint request", 422
            ) from None
        raise  # the live-mint check above holds the album lock: not expected
    await conn.execute(  # a re-mint leaves a minted album minted
        "UPDATE albums SET status = 'minting', updated_at = now()"
        " WHERE id = $1 AND status <> 'minted'",
        album_id,
    )
    if chain_id is not None:  # else nothing indexed and no CHAIN_ID: the minter announces later
        await announce_mint(conn, chain_id, row)
    return MintAccepted(mint_id=row["id"], status=row["status"], album_id=album_id)


def _default_token_uri(request: Request[Any, Any, Any], album_id: uuid.UUID) -> str:
    """The album's metadata URL on this API, when clients can reach it: a token URI is
    written on chain for good, so a bind address such as 0.0.0.0 must not end up there."""
    settings = request.app.state.settings
    if settings.public_url is None and settings.http_host not in LOOPBACK_HOSTS:
        raise _bad(
            "token_uri",
            "is required: this API has no PUBLIC_URL to build the album's metadata URL from",
            422,
        )
    return f"{settings.public_base_url()}/albums/{album_id}/metadata.json"


def _spec(container: type, description: str) -> ResponseSpec:
    return ResponseSpec(data_container=container, description=description)


AUTH_ERRORS = {
    401: ResponseSpec(data_container=None, description="No, expired or invalid bearer token"),
    403: ResponseSpec(data_container=None, description="The token's role may not do this"),
    409: ResponseSpec(
        data_container=None,
        description="Idempotency-Key still running (Retry-After), or the album is already minted",
    ),
    422: ResponseSpec(data_container=None, description="Idempotency-Key reused with another body"),
    429: ResponseSpec(data_container=None, description="Rate limit (Retry-After, RateLimit-*)"),
}


class ArtistWriteController(Controller):
    path = "/artists"
    tags = ["writes"]

    @post(
        "/",
        summary="Create an artist (admin)",
        status_code=HTTP_201_CREATED,
        responses={201: _spec(Artist, "The artist"), **AUTH_ERRORS},
    )
    async def create_artist(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[NewArtist],
        idempotency_key: IdempotencyKey,
    ) -> Response[bytes]:
        principal = _principal(request)
        principal.require_admin()
        data = await strict(request, data)
        name = clean_text("name", data.name)
        wallet = clean_address("wallet", data.wallet) if data.wallet is not None else None

        async def work(conn: asyncpg.Connection) -> tuple[int, Any]:
            artist_id = await catalog.insert_artist(conn, name, wallet)
            shown = checksum_address(wallet) if wallet is not None else None
            return HTTP_201_CREATED, Artist(id=artist_id, name=name, wallet=shown)

        return await _once(request, principal, idempotency_key, data, work)


class AlbumWriteController(Controller):
    path = "/albums"
    tags = ["writes"]

    @post(
        "/",
        summary="Create an album with its tracks (draft)",
        status_code=HTTP_201_CREATED,
        responses={
            201: _spec(Album, "The album, as GET /albums/{album_id} shows it"),
            **AUTH_ERRORS,
        },
    )
    async def create_album(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[NewAlbum],
        idempotency_key: IdempotencyKey,
    ) -> Response[bytes]:
        principal = _principal(request)
        data = await strict(request, data)
        clean_metadata(data.metadata)  # before the body is stored with its idempotency key

        async def work(conn: asyncpg.Connection) -> tuple[int, Any]:
            album_id = await _create_album(conn, principal, data)
            return HTTP_201_CREATED, await _album_view(conn, album_id, request.state.chain_view)

        return await _once(request, principal, idempotency_key, data, work)

    @post(
        "/{album_id:str}/mint",
        summary="Queue the mint of an album (202: poll GET /mints/{mint_id})",
        status_code=HTTP_202_ACCEPTED,
        responses={202: _spec(MintAccepted, "Queued: the minter sends it"), **AUTH_ERRORS},
    )
    async def mint_album(
        self,
        request: Request[Any, Any, Any],
        album_id: UuidPath,
        idempotency_key: IdempotencyKey,
        data: JSONBody[MintOptions | None] = None,
    ) -> Response[bytes]:
        principal = _principal(request)
        key = params.album_id("album_id", album_id)
        options = await strict(request, data) if data is not None else MintOptions()

        async def work(conn: asyncpg.Connection) -> tuple[int, Any]:
            accepted = await _queue_mint(
                request,
                conn,
                principal,
                key,
                to=options.to,
                token_uri=options.token_uri,
                remint=options.remint,
            )
            return HTTP_202_ACCEPTED, accepted

        return await _once(request, principal, idempotency_key, options, work)

    @post(
        "/mint",
        summary="Create an album and queue its mint in one call",
        status_code=HTTP_202_ACCEPTED,
        responses={202: _spec(MintAccepted, "Created and queued"), **AUTH_ERRORS},
    )
    async def create_and_mint(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[NewAlbumMint],
        idempotency_key: IdempotencyKey,
    ) -> Response[bytes]:
        principal = _principal(request)
        data = await strict(request, data)
        clean_metadata(data.metadata)  # before the body is stored with its idempotency key

        async def work(conn: asyncpg.Connection) -> tuple[int, Any]:
            album_id = await _create_album(conn, principal, data)
            accepted = await _queue_mint(
                request,
                conn,
                principal,
                album_id,
                to=data.to,
                token_uri=data.token_uri,
                remint=False,
            )
            return HTTP_202_ACCEPTED, accepted

        return await _once(request, principal, idempotency_key, data, work)


class MintController(Controller):
    path = "/mints"
    tags = ["writes"]

    @get(
        "/{mint_id:str}",
        summary="A mint request's lifecycle: queued → submitted → mined → confirmed → finalized",
        responses={**AUTH_ERRORS},
    )
    async def get_mint(self, request: Request[Any, Any, Any], mint_id: UuidPath) -> Mint:
        principal = _principal(request)
        params.reject_unknown(request.query_params, ())
        key = params.album_id("mint_id", mint_id)
        row = await get_mint(request.app.state.pool, key)
        if row is None:
            raise NotFoundException(detail=f"mint {key} not found")
        if not principal.is_admin and row["requester"] != principal.subject:
            raise PermissionDeniedException(detail="this mint was requested by someone else")
        history = await mint_history(request.app.state.pool, key)
        return mint_view(row, history)


def mint_view(row: asyncpg.Record, history: Sequence[asyncpg.Record] = ()) -> Mint:
    return Mint(
        id=row["id"],
        album_id=row["album_id"],
        status=row["status"],
        to=checksum_address(row["to_address"]),
        token_uri=row["token_uri"],
        remint=row["remint"],
        contract=checksum_address(row["contract"]) if row["contract"] is not None else None,
        nonce=row["nonce"],
        tx_hash=hex0x_or_none(row["tx_hash"]),
        block_number=row["block_number"],
        block_hash=hex0x_or_none(row["block_hash"]),
        token_id=str(row["token_id"]) if row["token_id"] is not None else None,
        error=row["error"],
        attempts=row["attempts"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        history=[MintEvent(e["status"], e["at"], e["tx_hash"], e["block_number"]) for e in history],
    )
