"""Log lines: asyncpg's pool reconnect failures are one line, not a traceback."""

from __future__ import annotations

import io
import logging

from discograph import logs


def test_asyncpg_pool_failures_are_logged_on_one_line_with_the_error() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.configure_logging("INFO")
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError:
            logging.getLogger("asyncpg.pool").warning("Failed to restore the pool", exc_info=True)
            logging.getLogger("discograph.test").warning("ours keeps it", exc_info=True)
    finally:
        logging.getLogger("asyncpg.pool").filters.clear()
        root.handlers[:], root.level = saved[0], saved[1]
    pool_line, *ours = stream.getvalue().splitlines()
    assert "asyncpg.pool Failed to restore the pool error=ConnectionRefusedError(111" in pool_line
    assert ours[0].endswith("discograph.test ours keeps it")
    assert ours[1] == "Traceback (most recent call last):"
