"""`newHeads` over websockets: wakes the tip loop as soon as a block arrives."""

from __future__ import annotations

import asyncio
import json
import logging

import websockets

from discograph.settings import redact_url

log = logging.getLogger("discograph.indexer")


async def watch_new_heads(url: str, wake: asyncio.Event, *, max_backoff: float = 30.0) -> None:
    """Set `wake` on every new head; reconnects forever (polling covers the gaps)."""
    backoff = 0.5
    while True:
        try:
            async with websockets.connect(url, open_timeout=10, max_size=2**22) as ws:
                await ws.send(
                    json.dumps(
                        {
                            "jsonrpc": "2.0",
                            "id": 1,
                            "method": "eth_subscribe",
                            "params": ["newHeads"],
                        }
                    )
                )
                answer = json.loads(await ws.recv())
                if "error" in answer:
                    log.warning("newHeads subscription refused: polling only", extra=answer)
                    return
                log.info("following newHeads", extra={"url": redact_url(url)})
                backoff = 0.5
                async for _ in ws:
                    wake.set()
        except asyncio.CancelledError:
            raise
        except (OSError, websockets.WebSocketException, json.JSONDecodeError) as exc:
            log.warning(
                "newHeads connection lost, polling meanwhile",
                extra={"error": type(exc).__name__, "retry_in": backoff},
            )
        await asyncio.sleep(backoff)
        backoff = min(max_backoff, backoff * 2)
