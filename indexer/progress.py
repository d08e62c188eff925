"""Progress of long work on the terminal: blocks/s, events/s, lag and ETA."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger("discograph.indexer")


class Progress:
    """Prints a progress line at most every `every` seconds (rewritten in place on a TTY)."""

    def __init__(self, stream: TextIO | None = None, every: float = 1.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.every = every if self.tty else max(every, 10.0)
        self.started = time.monotonic()
        self.last_print = 0.0
        self.blocks = 0
        self.events = 0
        self.first_block: int | None = None
        self._dirty = False
        self._shown: tuple[int, int] | None = None

    def advance(self, blocks: int, events: int) -> None:
        self.blocks += blocks
        self.events += events

    def rates(self) -> tuple[float, float]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return self.blocks / elapsed, self.events / elapsed

    def show(self, indexed: int, target: int, head: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_print < self.every:
            return
        if force and self._shown == (indexed, target):
            return
        self._shown = (indexed, target)
        self.last_print = now
        blocks_per_s, events_per_s = self.rates()
        remaining = max(target - indexed, 0)
        eta = f"{remaining / blocks_per_s:,.0f}s" if blocks_per_s > 0 and remaining else "0s"
        line = (
            f"indexed {indexed:,} / {target:,} · {blocks_per_s:,.0f} blocks/s · "
            f"{events_per_s:,.0f} events/s · lag {max(head - indexed, 0):,} blocks · ETA {eta}"
        )
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
            self._dirty = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self._dirty:
            self.stream.write("\n")
            self.stream.flush()
            self._dirty = False
