"""`Idempotency-Key` on the write routes, stored in Postgres per subject (DESIGN.md).

A first request claims the key (a `running` row, committed at once), then does its work in one
transaction that also turns the claim into the stored answer (`done`). So:
- the same key and body again → the stored answer, replayed (`Idempotent-Replayed: true`);
- the same key while the first is still running → 409 with `Retry-After`;
- the same key with another request (body, method or path) → 422;
- however many arrive at once, the work commits at most once: the claim's insert is the
  arbiter, and the work's final update only matches the claim it made (a claim left by a
  crashed process is taken over after `CLAIM_TIMEOUT`, and the slow original then rolls back).
A request whose work fails (4xx or error) releases its claim: the key can be used again.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import msgspec
from litestar import MediaType, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_409_CONFLICT, HTTP_422_UNPROCESSABLE_ENTITY

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
CLAIM_TIMEOUT = datetime.timedelta(seconds=60)
KEEP_FOR = datetime.timedelta(hours=24)  # how long a key replays its answer

Work = Callable[[asyncpg.Connection], Awaitable[tuple[int, Any]]]


def parse_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_KEY_LENGTH or not value.isascii() or not value.isprintable():
        message = f"must be 1..{MAX_KEY_LENGTH} printable ASCII characters"
        raise ValidationException(
            detail=f"Invalid {HEADER}: {message}",
            extra=[{"key": HEADER, "message": message, "source": "header"}],
        )
    return value


def request_hash(method: str, path: str, body: Any) -> bytes:
    """Of the request as understood (the validated body re-encoded: whitespace and key order
    of the client's JSON do not make it another request)."""
    digest = hashlib.sha256(f"{method} {path}\n".encode())
    digest.update(msgspec.json.encode(body, order="sorted"))
    return digest.digest()


def _answer(status: int, body: bytes, replayed: bool) -> Response[bytes]:
    headers = {REPLAYED_HEADER: "true"} if replayed else {}
    return Response(body, status_code=status, media_type=MediaType.JSON, headers=headers)


async def run_once(
    pool: asyncpg.Pool,
    *,
    subject: str,
    key: str | None,
    method: str,
    path: str,
    body: Any,
    work: Work,
) -> Response[bytes]:
    """Run `work` (in a transaction) at most once per (subject, key); see the module doc."""
    if key is None:
        async with pool.acquire() as conn, conn.transaction():
            status, result = await work(conn)
        return _answer(status, msgspec.json.encode(result), replayed=False)
    digest = request_hash(method, path, body)
    async with pool.acquire() as conn:
        claimed_at = await _claim(conn, subject, key, method, path, digest)
        if isinstance(claimed_at, Response):
            return claimed_at
        try:
            async with conn.transaction():
                status, result = await work(conn)
                encoded = msgspec.json.encode(result)
                stored = await conn.fetchval(
                    "UPDATE idempotency_keys SET state = 'done', response_status = $4,"
                    " response_body = $5, updated_at = now()"
                    " WHERE subject = $1 AND key = $2 AND state = 'running' AND updated_at = $3"
                    " RETURNING 1",
                    subject,
                    key,
                    claimed_at,
                    status,
                    encoded,
                )
                if stored is None:  # taken over after CLAIM_TIMEOUT: the other one answers
                    raise HTTPException(
                        status_code=HTTP_409_CONFLICT,
                        detail=f"{HEADER} {key!r} was taken over by a retry; ask again",
                        headers={"Retry-After": "1"},
                    )
        except BaseException:
            await conn.execute(
                "DELETE FROM idempotency_keys"
                " WHERE subject = $1 AND key = $2 AND state = 'running' AND updated_at = $3",
                subject,
                key,
                claimed_at,
            )
            raise
    return _answer(status, encoded, replayed=False)


async def _claim(
    conn: asyncpg.Connection, subject: str, key: str, method: str, path: str, digest: bytes
) -> datetime.datetime | Response[bytes]:
    """The claim's timestamp when this request owns the key, else the answer to give."""
    for _ in range(3):
        claimed_at = await conn.fetchval(
            "INSERT INTO idempotency_keys (subject, key, method, path, request_hash)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (subject, key) DO NOTHING"
            " RETURNING updated_at",
            subject,
            key,
            method,
            path,
            digest,
        )
        if claimed_at is not None:
            return claimed_at  # type: ignore[no-any-return]
        row = await conn.fetchrow(
            "SELECT method, path, request_hash, state, response_status, response_body,"
            " updated_at < now() - $3::interval AS stale"
            " FROM idempotency_keys WHERE subject = $1 AND key = $2",
            subject,
            key,
            CLAIM_TIMEOUT,
        )
        if row is None:
            continue  # released meanwhile: claim it again
        if (row["method"], row["path"], bytes(row["request_hash"])) != (method, path, digest):
            raise HTTPException(
                status_code=HTTP_422_UNPROCESSABLE_ENTITY,
                detail=f"{HEADER} {key!r} was used for another request",
                extra=[
                    {"key": HEADER, "message": "reused with another request", "source": "header"}
                ],
            )
        if row["state"] == "done":
            return _answer(int(row["response_status"]), bytes(row["response_body"]), replayed=True)
        if row["stale"]:
            taken = await conn.fetchval(
                "UPDATE idempotency_keys SET updated_at = now()"
                " WHERE subject = $1 AND key = $2 AND state = 'running'"
                " AND updated_at < now() - $3::interval RETURNING updated_at",
                subject,
                key,
                CLAIM_TIMEOUT,
            )
            if taken is not None:
                return taken  # type: ignore[no-any-return]
            continue
        raise HTTPException(
            status_code=HTTP_409_CONFLICT,
            detail=f"a request with {HEADER} {key!r} is still running; retry shortly",
            headers={"Retry-After": "1"},
        )
    raise HTTPException(
        status_code=HTTP_409_CONFLICT,
        detail=f"{HEADER} {key!r} is contended; retry shortly",
        headers={"Retry-After": "1"},
    )


async def prune(pool: asyncpg.Pool) -> int:
    """Forget keys older than `KEEP_FOR` (a retry comes within minutes, not days)."""
    result = await pool.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - $1::interval", KEEP_FOR
    )
    return int(result.split()[-1])
