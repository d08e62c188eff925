"""The live page at `/`: recent albums and the feed as it arrives (plain HTML, no build step)."""

from __future__ import annotations

from pathlib import Path

from litestar import MediaType, Response, get

PAGE = (Path(__file__).resolve().parent.parent / "static" / "index.html").read_bytes()


@get("/", include_in_schema=False, media_type=MediaType.HTML, cache_control=None)
async def live_page() -> Response[bytes]:
    """Served from memory: the page is read once at import."""
    return Response(PAGE, media_type=MediaType.HTML, headers={"Cache-Control": "no-cache"})
