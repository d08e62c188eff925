"""The last transfer of each NFT on its `nfts` row (owner pages read no `transfers`).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 08:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("nfts", sa.Column("last_transfer_block", sa.BigInteger(), nullable=True))
    op.add_column("nfts", sa.Column("last_transfer_tx", sa.LargeBinary(), nullable=True))
    op.add_column("nfts", sa.Column("last_transfer_from", sa.LargeBinary(), nullable=True))
    # Rows indexed before this revision: fill in from the history, in one statement.
    op.execute(
        """
        UPDATE nfts n SET last_transfer_block = last.block_number,
                          last_transfer_tx = last.tx_hash,
                          last_transfer_from = last.from_address
        FROM (
            SELECT DISTINCT ON (chain_id, contract, token_id)
                   chain_id, contract, token_id, block_number, tx_hash, from_address
            FROM transfers
            ORDER BY chain_id, contract, token_id, block_number DESC, log_index DESC
        ) AS last
        WHERE n.chain_id = last.chain_id AND n.contract = last.contract
          AND n.token_id = last.token_id
        """
    )


def downgrade() -> None:
    op.drop_column("nfts", "last_transfer_from")
    op.drop_column("nfts", "last_transfer_tx")
    op.drop_column("nfts", "last_transfer_block")
