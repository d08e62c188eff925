"""Errors of the indexer: each one says what happened and what the operator can do."""

from __future__ import annotations

from discograph.errors import DiscographError


class IndexerError(DiscographError):
    """Base class of the indexer's errors."""


class MalformedAnswer(IndexerError):
    """A node's answer is not shaped or not consistent as it must be; it is never committed."""


class InconsistentAnswer(MalformedAnswer):
    """Logs and header disagree (another fork, a node that does not know the block yet)."""


class ReorgTooDeep(IndexerError):
    """The chain reorganised below the kept block window: only a reindex can repair it."""

    def __init__(self, tip: int, oldest_kept: int, window: int, suggested_from: int) -> None:
        super().__init__(
            f"reorg deeper than the kept window: no common ancestor between block {oldest_kept} "
            f"and the indexed tip {tip} (REORG_WINDOW={window}). The indexer stopped to keep the "
            f"projection consistent. Recover with: discograph reindex --from {suggested_from}"
        )
        self.suggested_from = suggested_from


class LeaseLost(IndexerError):
    """Another process took over as the active indexer (our advisory lock is gone)."""
