"""Drill: the indexer's batch writes fail mid-way, at the database, one fault after another.

Temporary statement-level triggers make Postgres fail a batch's transaction after part of it
was written: `disk_full` (SQLSTATE 53100) once the transfers are copied, a real statement
timeout (`statement_timeout` set on the database, the COPY sleeping past it), and
`query_canceled` (57014) once the checkpoint row and the owners have moved. Each fault stays
armed for at least 1.5 s and two failed attempts, while blocks keep coming. The indexer must
log, retry, never stop, and never commit part of a batch: a monitor reads the checkpoint and
the rows in one snapshot every few milliseconds, and every snapshot must equal a fresh index
cut at its checkpoint. Once the faults are gone it completes, equal to a fresh index."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import Iterator

import asyncpg

from chain.rpc import RpcClient
from chain.signer import Signer
from discograph.localchain import Anvil
from tests.chaos.drills import DrillLog
from tests.indexing import (
    ChainDriver,
    index_to_head,
    indexer_settings,
    live_indexer,
    projection,
    wait_synced,
)

STATEMENT_TIMEOUT = "300ms"
PHASE_DEADLINE = 15.0
PHASE_AT_LEAST = 1.5  # seconds armed, and at least two failed attempts, per fault

# Statement-level AFTER triggers: they fire once the statement has written all its rows, so
# the batch's transaction fails mid-way, with part of the batch already written in it. The
# test switches the fault on and off through `chaos_plan` (committed, so the indexer's next
# attempt sees it).
INSTALL = """
CREATE TABLE chaos_plan (mode text NOT NULL);
INSERT INTO chaos_plan VALUES ('disk_full');
CREATE FUNCTION chaos_transfers_fault() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE m text := (SELECT mode FROM chaos_plan);
BEGIN
    IF m = 'disk_full' THEN
        RAISE EXCEPTION 'chaos drill: no space left (injected after the transfers were copied)'
            USING ERRCODE = 'disk_full';
    ELSIF m = 'timeout' THEN
        PERFORM pg_sleep(1);  -- past statement_timeout: Postgres cancels the COPY
    END IF;
    RETURN NULL;
END $$;
CREATE FUNCTION chaos_nfts_fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT mode FROM chaos_plan) = 'cancel' THEN
        RAISE EXCEPTION 'chaos drill: canceled (injected after the checkpoint and owners moved)'
            USING ERRCODE = 'query_canceled';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER chaos_transfers_fault AFTER INSERT ON transfers
    FOR EACH STATEMENT EXECUTE FUNCTION chaos_transfers_fault();
CREATE TRIGGER chaos_nfts_fault AFTER INSERT OR UPDATE ON nfts
    FOR EACH STATEMENT EXECUTE FUNCTION chaos_nfts_fault();
"""

REMOVE = """
DROP TRIGGER chaos_transfers_fault ON transfers;
DROP TRIGGER chaos_nfts_fault ON nfts;
DROP FUNCTION chaos_transfers_fault();
DROP FUNCTION chaos_nfts_fault();
DROP TABLE chaos_plan;
"""

# (mode, what the indexer's retry log line must show for it)
PHASES = (
    ("disk_full", "no space left"),
    ("timeout", "statement timeout"),
    ("cancel", "checkpoint and owners moved"),
)

# One statement, one snapshot: the checkpoint and the rows as another reader sees them.
SNAPSHOT = """
SELECT c.block_number,
       (SELECT count(*) FROM transfers t WHERE t.chain_id = c.chain_id) AS transfers,
       (SELECT count(*) FROM token_events e WHERE e.chain_id = c.chain_id) AS token_events,
       (SELECT count(*) FROM transfers t
         WHERE t.chain_id = c.chain_id AND t.block_number > c.block_number) AS transfers_above,
       (SELECT coalesce(max(n.updated_block), -1) FROM nfts n
         WHERE n.chain_id = c.chain_id) AS nfts_updated
FROM checkpoints c
"""


class RetryLog(logging.Handler):
    """The indexer's `indexing step failed, retrying` lines: error class and detail."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.failures: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "indexing step failed, retrying":
            self.failures.append(
                (str(getattr(record, "error", "?")), str(getattr(record, "detail", "")))
            )


@contextlib.contextmanager
def indexer_retries() -> Iterator[RetryLog]:
    handler = RetryLog()
    logger = logging.getLogger("discograph.indexer")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def watch(database_url: str, seen: set[tuple[int, ...]], stop: asyncio.Event) -> None:
    """Record every distinct (checkpoint, rows) snapshot until `stop`."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SET statement_timeout = 0")
        while not stop.is_set():
            row = await conn.fetchrow(SNAPSHOT)
            if row is not None:
                seen.add(tuple(int(v) for v in row.values()))
            await asyncio.sleep(0.005)
    finally:
        await conn.close()


async def activity(driver: ChainDriver, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await driver.random_activity(1)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.3)


async def test_batch_writes_failing_mid_way_are_retried_and_never_half_committed(
    anvil: Anvil,
    rpc: RpcClient,
    dev_signers: list[Signer],
    database_url: str,
    second_database_url: str,
    drill_log: DrillLog,
) -> None:
    drill = drill_log
    driver = ChainDriver(rpc, dev_signers, random.Random(14))
    (album,) = await driver.deploy(1)
    await driver.random_activity(25)
    await anvil_mine(rpc, 0x50)  # history below anvil's `finalized`: a backfill batch
    await driver.random_activity(8)  # and blocks above it: tip batches
    admin = await asyncpg.connect(database_url)
    database = await admin.fetchval("SELECT current_database()")
    await admin.execute(
        f'ALTER DATABASE "{database}" SET statement_timeout = {STATEMENT_TIMEOUT!r}'
    )
    await admin.execute(INSTALL)
    settings = indexer_settings(anvil.rpc_url, ALBUM_CONTRACT=album)
    seen: set[tuple[int, ...]] = set()
    stop_watch, stop_activity = asyncio.Event(), asyncio.Event()
    try:
        with indexer_retries() as retries:
            async with live_indexer(database_url, settings) as task:
                watcher = asyncio.create_task(watch(database_url, seen, stop_watch))
                chain = asyncio.create_task(activity(driver, stop_activity))
                for mode, shows in PHASES:
                    await admin.execute("UPDATE chaos_plan SET mode = $1", mode)
                    drill.did(f"armed {mode} on the indexer's batch writes")
                    failed = await until_failed(retries, shows, task)
                    await admin.execute("UPDATE chaos_plan SET mode = 'off'")
                    moved = await until_committed(admin, task)
                    drill.did(
                        f"disarmed {mode} after {failed} failed attempts; the next batch"
                        f" committed (checkpoint {moved})"
                    )
                await admin.execute(REMOVE)
                await admin.execute(f'ALTER DATABASE "{database}" RESET statement_timeout')
                stop_activity.set()
                await chain
                head = await wait_synced(database_url, rpc, task=task, timeout=30)
                stop_watch.set()
                await watcher
    finally:
        stop_watch.set()
        stop_activity.set()
        with contextlib.suppress(asyncpg.PostgresError):
            await admin.execute(f'ALTER DATABASE "{database}" RESET statement_timeout')
        await admin.close()

    kinds = collections.Counter(error for error, _ in retries.failures)
    timeouts = sum("statement timeout" in detail for _, detail in retries.failures)
    canceled = sum("owners moved" in detail for _, detail in retries.failures)
    assert kinds["DiskFullError"] > 0, retries.failures
    assert timeouts > 0, retries.failures
    assert canceled > 0, retries.failures
    drill.checked(
        f"the indexer logged and retried {len(retries.failures)} failed batches"
        f" ({kinds['DiskFullError']} disk full, {timeouts} statement timeouts, {canceled}"
        f" canceled after the checkpoint moved) and never stopped; synced to block {head}"
    )

    await index_to_head(second_database_url, settings)
    live, fresh = await projection(database_url), await projection(second_database_url)
    assert live == fresh
    assert len(fresh["transfers"]) >= 30
    # Every snapshot a reader could take matches the fresh index cut at its checkpoint.
    for checkpoint, transfers, token_events, above, nfts_updated in sorted(seen):
        expected_transfers = sum(1 for t in fresh["transfers"] if t[1] <= checkpoint)
        expected_events = sum(1 for e in fresh["token_events"] if e[1] <= checkpoint)
        assert above == 0, (checkpoint, above)
        assert transfers == expected_transfers, (checkpoint, transfers, expected_transfers)
        assert token_events == expected_events, (checkpoint, token_events, expected_events)
        assert nfts_updated <= checkpoint, (checkpoint, nfts_updated)
    drill.checked(
        f"{len(seen)} distinct snapshots of checkpoint and rows, each equal to a fresh index"
        f" cut at its checkpoint (no half batch ever visible); final projection equals a fresh"
        f" index ({len(fresh['transfers'])} transfers)"
    )


async def until_failed(retries: RetryLog, shows: str, task: asyncio.Task[int]) -> int:
    """Wait until the indexer retried this fault twice, and PHASE_AT_LEAST seconds have
    passed (blocks pile up meanwhile: the failing batches grow); how many it logged."""
    began = time.monotonic()
    deadline = began + PHASE_DEADLINE
    while (count := sum(shows in detail for _, detail in retries.failures)) < 2 or (
        time.monotonic() - began < PHASE_AT_LEAST
    ):
        assert not task.done(), f"the indexer stopped: {task.exception()!r}"
        assert time.monotonic() < deadline, f"no retry for {shows!r}: {retries.failures}"
        await asyncio.sleep(0.05)
    return count


async def until_committed(admin: asyncpg.Connection, task: asyncio.Task[int]) -> int:
    """Wait until the indexer commits a batch (the checkpoint moves); the new checkpoint."""
    query = "SELECT coalesce(max(block_number), -1) FROM checkpoints"
    before = await admin.fetchval(query)
    deadline = time.monotonic() + PHASE_DEADLINE
    while (now := await admin.fetchval(query)) <= before:
        assert not task.done(), f"the indexer stopped: {task.exception()!r}"
        assert time.monotonic() < deadline, "no batch committed after the fault was disarmed"
        await asyncio.sleep(0.05)
    return int(now)


async def anvil_mine(rpc: RpcClient, blocks: int) -> None:
    await rpc.call("anvil_mine", [hex(blocks)])
