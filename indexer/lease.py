"""One active indexer per chain: a Postgres advisory lock held on a dedicated connection.

A second indexer waits as hot standby until the lock frees (the first one's connection closes
when it dies). Every write transaction re-checks that our connection still holds the lock
(fencing), so a process that lost it can never commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from db.engine import DB_ERRORS
from discograph.encoding import keccak_text
from indexer.errors import LeaseLost

log = logging.getLogger("discograph.indexer")


def lock_key(chain_id: int) -> int:
    """A stable signed 64-bit advisory-lock key for the indexer of `chain_id`."""
    return int.from_bytes(keccak_text(f"discograph-indexer:{chain_id}")[:8], "big", signed=True)


class Lease:
    def __init__(self, dsn: str, chain_id: int, *, retry_every: float = 0.5) -> None:
        self.dsn = dsn
        self.chain_id = chain_id
        self.key = lock_key(chain_id)
        self.retry_every = retry_every
        self._conn: asyncpg.Connection | None = None
        self._pid = 0

    async def acquire(self) -> None:
        """Wait (as standby) until this process is the chain's active indexer. A database that
        goes away meanwhile (a restart) is waited for too: the standby stays a standby."""
        waited = unreachable = False
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.dsn)
                if unreachable:
                    log.info("database reachable again", extra={"chain_id": self.chain_id})
                    unreachable = False
                while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key):
                    if not waited:
                        log.info(
                            "another indexer is active for this chain: waiting as hot standby",
                            extra={"chain_id": self.chain_id},
                        )
                        waited = True
                    await asyncio.sleep(self.retry_every)
            except DB_ERRORS as exc:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
                if not unreachable:
                    log.warning(
                        "lease connection failed, retrying",
                        extra={"chain_id": self.chain_id, "error": repr(exc)[:200]},
                    )
                    unreachable = True
                await asyncio.sleep(self.retry_every)
                continue
            except BaseException:
                if conn is not None:
                    await conn.close()
                raise
            break
        if waited:
            log.info("took over as the active indexer", extra={"chain_id": self.chain_id})
        self._conn = conn
        self._pid = conn.get_server_pid()

    async def assert_held(self, conn: asyncpg.Connection) -> None:
        """Inside a write transaction: fail unless our lock connection still holds the lock."""
        unsigned = self.key & 0xFFFFFFFFFFFFFFFF
        held = await conn.fetchval(
            """
            SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
                           AND pid = $1 AND classid::bigint = $2 AND objid::bigint = $3
                           AND objsubid = 1)
            """,
            self._pid,
            unsigned >> 32,
            unsigned & 0xFFFFFFFF,
        )
        if not held:
            raise LeaseLost("the indexer's advisory lock is no longer held")

    async def release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                if not conn.is_closed():
                    await conn.execute("SELECT pg_advisory_unlock($1)", self.key)
            except DB_ERRORS:
                pass  # the connection is gone, and the lock with it
            finally:
                with contextlib.suppress(asyncpg.InterfaceError, OSError):
                    await conn.close()
