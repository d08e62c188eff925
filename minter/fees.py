"""EIP-1559 fees and gas limits of mint transactions: the first offer and each replacement's."""

from __future__ import annotations

from dataclasses import dataclass

# Replacements raise both fees by at least 1/8 (12.5 %): geth refuses a same-nonce replacement
# below +10 % on either fee, and some pools ask more than geth.
BUMP_NUMERATOR, BUMP_DENOMINATOR = 9, 8
# By default a replacement never offers more than this many times what a fresh transaction
# would (setting MINT_FEE_CAP): a mint stuck for another reason (a nonce gap, a node that drops
# it) must not bid fees up forever.
MAX_FEE_MULTIPLE = 8
# Headroom over `eth_estimateGas`: state moves between the estimate and inclusion (the same
# 20 % as chain.transact.build_transaction).
GAS_HEADROOM_NUMERATOR, GAS_HEADROOM_DENOMINATOR = 6, 5


@dataclass(frozen=True)
class Fees:
    """`maxFeePerGas` and `maxPriorityFeePerGas` of a type-2 transaction, in wei."""

    max_fee: int
    priority: int


def fresh_fees(base_fee: int, tip: int) -> Fees:
    """What a new transaction offers: twice the base fee (room for six full blocks) plus the tip,
    as `chain.transact.build_transaction` does."""
    return Fees(max_fee=2 * base_fee + tip, priority=tip)


def _bump(value: int) -> int:
    # Ceiling of value * 9/8, and always at least one wei more (a 0 tip still moves).
    return max(value + 1, -(-value * BUMP_NUMERATOR // BUMP_DENOMINATOR))


def bumped_fees(previous: Fees, market: Fees, cap: float = MAX_FEE_MULTIPLE) -> Fees | None:
    """The fees of a replacement: each at least 12.5 % above `previous`, and no less than what
    the market asks now. None when that would exceed `cap` times the market."""
    priority = max(_bump(previous.priority), market.priority)
    max_fee = max(_bump(previous.max_fee), market.max_fee, priority)
    if max_fee > cap * max(market.max_fee, 1):
        return None
    return Fees(max_fee=max_fee, priority=priority)


def gas_limit(estimate: int) -> int:
    return estimate * GAS_HEADROOM_NUMERATOR // GAS_HEADROOM_DENOMINATOR
