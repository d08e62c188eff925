"""The signing key, wrapped so that it is used but never shown (eth-account underneath)."""

from __future__ import annotations

from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount


class Signer:
    """Signs transactions for one address. `repr` shows the address only."""

    def __init__(self, private_key: str) -> None:
        self._account: LocalAccount = Account.from_key(private_key)

    @property
    def address(self) -> str:
        """EIP-55 checksummed address of the key."""
        return str(self._account.address)

    def sign_transaction(self, tx: dict[str, Any]) -> tuple[str, str]:
        """Sign a transaction dict; returns (raw transaction hex, transaction hash hex)."""
        signed = self._account.sign_transaction(tx)
        return "0x" + bytes(signed.raw_transaction).hex(), "0x" + bytes(signed.hash).hex()

    def __repr__(self) -> str:
        return f"Signer(address={self.address})"
