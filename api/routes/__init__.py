"""Route handlers, one module per resource."""

from __future__ import annotations

from typing import Any

from litestar import route
from litestar.enums import HttpMethod
from litestar.handlers import HTTPRouteHandler


def read(path: str | None = None, **kwargs: Any) -> HTTPRouteHandler:
    """A public read route: `GET`, and `HEAD` (the same answer, headers only: the server
    drops the body), as the read rate limit and the docs name both. Not for routes behind
    JWT authentication: Litestar's JWT middleware lets `HEAD` through unauthenticated."""
    return route(path, http_method=[HttpMethod.GET, HttpMethod.HEAD], **kwargs)
