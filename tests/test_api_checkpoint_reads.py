"""Shared checkpoint reads never answer a request with a read that started before it."""

from __future__ import annotations

import asyncio

from api.freshness import CheckpointReads


async def test_a_request_after_a_commit_never_gets_a_read_that_started_before_it() -> None:
    committed = {"block": 1}
    started: list[int] = []
    gate = asyncio.Event()

    async def fetch() -> int:
        snapshot = committed["block"]  # what a query starting now would see
        started.append(snapshot)
        await gate.wait()
        return snapshot

    reads = CheckpointReads(fetch)
    first = asyncio.create_task(reads.read())
    await asyncio.sleep(0.01)  # the first read is in flight, with block 1
    committed["block"] = 2  # a commit lands while it runs
    later = [asyncio.create_task(reads.read()) for _ in range(5)]  # requests after the commit
    await asyncio.sleep(0.01)
    gate.set()
    assert await first == 1
    assert [await task for task in later] == [2] * 5
    assert started == [1, 2]  # the five later requests shared one read


async def test_concurrent_requests_share_one_read_and_errors_reach_every_waiter() -> None:
    calls = 0

    async def failing() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise OSError("database unreachable")

    reads = CheckpointReads(failing)
    results = await asyncio.gather(*(reads.read() for _ in range(8)), return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)
    assert calls == 1
