"""Typed errors of the chain package: callers decide on retry by type, never by message."""

from __future__ import annotations

from typing import Any

from discograph.errors import DiscographError


class ChainError(DiscographError):
    """Base class of everything raised by `chain`."""


class RpcTransportError(ChainError):
    """The node could not be reached or the connection broke (retryable)."""


class RpcTimeout(RpcTransportError):
    """No answer within the client's timeout (retryable)."""


class RpcHttpError(RpcTransportError):
    """The node answered with a non-200 HTTP status; 429 and 5xx are retryable."""

    def __init__(self, status: int, body: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.status == 429 or self.status >= 500


class RpcMalformedResponse(ChainError):
    """The answer is not valid JSON-RPC (truncated body, wrong ids, missing result)."""


class RpcError(ChainError):
    """The node answered with a JSON-RPC error object."""

    def __init__(self, method: str, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{method}: [{code}] {message}")
        self.method = method
        self.code = code
        self.rpc_message = message
        self.data = data


class RpcRevert(RpcError):
    """The node says the call would revert (e.g. in `eth_estimateGas`); `data` holds the reason."""


class TransactionReverted(ChainError):
    """A transaction was mined with status 0."""

    def __init__(self, tx_hash: str, reason: str | None = None) -> None:
        super().__init__(f"transaction {tx_hash} reverted" + (f": {reason}" if reason else ""))
        self.tx_hash = tx_hash
        self.reason = reason


class ReceiptTimeout(ChainError):
    """A sent transaction was not mined in the time allowed."""
