"""The live page at `/` in a real browser (Debian's chromium driven by Playwright): albums with
owners, the feed as it arrives, reorgs struck through, finality marked, reconnection."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chain.album import mint_album
from chain.rpc import RpcClient
from chain.signer import Signer
from discograph.processes import free_port
from tests.feeding import Emitter
from tests.indexing import indexer_settings, live_indexer, wait_synced
from tests.test_api_writes import ADMIN, album_body, bearer, token
from tests.test_feed import emitter, served_api  # noqa: F401

CHROMIUM = "/usr/bin/chromium"
# The committed screenshot; a run rewrites it only when asked (UPDATE_SCREENSHOT=1), so that
# `make test` leaves the work tree as it found it.
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "feed-page.png"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

try:
    from playwright.async_api import Page, async_playwright
except ImportError:  # pragma: no cover - the dev extras install it
    async_playwright = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(
    async_playwright is None or shutil.which(CHROMIUM) is None,
    reason="needs Debian's chromium (/usr/bin/chromium: `make test` installs it as root) and"
    " the playwright package",
)


@contextlib.asynccontextmanager
async def browser_page() -> AsyncIterator[Page]:
    assert async_playwright is not None
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            yield page
        finally:
            await browser.close()


async def rows(page: Page, selector: str = "#feed tbody tr") -> list[dict[str, Any]]:
    return list(
        await page.eval_on_selector_all(
            selector,
            "rows => rows.map(r => ({cursor: r.dataset.cursor, block: r.dataset.block,"
            " classes: [...r.classList], text: r.innerText}))",
        )
    )


async def until(check: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_the_live_page_shows_albums_and_the_feed_with_reorgs_finality_and_reconnection(
    database_url: str,
    redis_url: str,
    rpc: RpcClient,
    emitter: Emitter,
    album_contract: str,
    dev_signers: list[Signer],
    tmp_path: Path,
) -> None:
    screenshot = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") else tmp_path / "page.png"
    settings = indexer_settings(
        rpc.url, ALBUM_CONTRACT=album_contract, EXTRA_CONTRACTS=emitter.contract
    )
    port = free_port()
    async with live_indexer(database_url, settings) as task, browser_page() as page:
        await wait_synced(database_url, rpc, task=task)
        with served_api(database_url, redis_url, port=port) as api:
            async with aiohttp.ClientSession(api) as http:
                async with http.post("/artists", json={"name": "Aurora Lane"}, headers=ADMIN) as r:
                    artist = (await r.json())["id"]
                body = album_body("Northern Static")
                async with http.post("/albums", json=body, headers=bearer(token(artist))) as r:
                    album = (await r.json())["id"]
            await page.goto(api + "/")
            await until(lambda: page.locator("#status.live").count(), "the page to go live")
            assert "connected" in await page.inner_text("#status")
            assert "Northern Static" in await page.inner_text("#albums")

            owner = dev_signers[3].address
            await mint_album(
                rpc,
                dev_signers[0],
                album_contract,
                to=owner,
                album_id=uuid.UUID(album),
                uri="ipfs://northern-static",
            )
            for _ in range(3):
                await emitter.block(mints=4)
            await wait_synced(database_url, rpc, task=task)
            shown = await until(
                lambda: _rows_at_least(page, 2 + 12), "the mint and transfers to show"
            )
            assert any("mint" in r["text"] for r in shown)
            await until(
                lambda: _contains(page, "#albums", f"{owner[:6]}…{owner[-4:]}"),
                "the album's owner to show",
            )

            await rpc.call("anvil_reorg", [2, []])
            await rpc.call("anvil_mine", ["0x1"])
            await wait_synced(database_url, rpc, task=task)
            struck = await until(
                lambda: _rows_with(page, "removed", 16), "removed rows to be struck through"
            )
            originals = [r for r in struck if "removed" not in r["text"]]
            assert len(originals) == 8, "each orphaned event's own row is struck through too"
            decorations = await page.eval_on_selector_all(
                "#feed tbody tr.removed td.kind",
                "cells => cells.map(c => getComputedStyle(c).textDecorationLine)",
            )
            assert decorations, "no struck row rendered"
            assert all("line-through" in d for d in decorations), decorations

            await rpc.call("anvil_mine", [hex(70)])
            await wait_synced(database_url, rpc, task=task)
            final = await until(lambda: _rows_with(page, "final", 6), "finalized rows")
            assert all("removed" not in r["classes"] for r in final)
            badge = await page.eval_on_selector(
                "#feed tbody tr.final td.kind", "c => getComputedStyle(c, '::after').content"
            )
            assert "✓" in badge
            await page.screenshot(path=str(screenshot), full_page=True)
            before = len(await rows(page))

        # The API goes away: the page says so, then resumes from its cursor when it is back.
        await until(lambda: page.locator("#status.down").count(), "the page to notice")
        assert "reconnecting" in await page.inner_text("#status")
        await emitter.block(mints=5)
        await wait_synced(database_url, rpc, task=task)
        with served_api(database_url, redis_url, port=port):
            await until(lambda: page.locator("#status.live").count(), "the page to resume", 30)
            after = await until(lambda: _rows_at_least(page, before + 5), "the missed events")
    cursors = [r["cursor"] for r in after]
    assert len(cursors) == len(set(cursors)), "no event is shown twice"


async def _rows_at_least(page: Page, count: int) -> list[dict[str, Any]] | None:
    found = await rows(page)
    return found if len(found) >= count else None


async def _rows_with(page: Page, cls: str, count: int) -> list[dict[str, Any]] | None:
    found = [r for r in await rows(page) if cls in r["classes"]]
    return found if len(found) >= count else None


async def _contains(page: Page, selector: str, text: str) -> bool:
    return text in await page.inner_text(selector)
