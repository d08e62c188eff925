"""`mint_requests.chain_id`, and an index of a signer's requests by nonce.

Existing rows get the chain id of the database's only indexed chain (the `checkpoints` row),
when there is exactly one; otherwise they keep NULL (the minter fills it in when it sends).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 04:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("mint_requests", sa.Column("chain_id", sa.BigInteger(), nullable=True))
    op.execute(
        """
        UPDATE mint_requests SET chain_id = (SELECT chain_id FROM checkpoints)
        WHERE chain_id IS NULL AND (SELECT count(*) FROM checkpoints) = 1
        """
    )
    op.create_index(
        "ix_mint_requests_signer_nonce",
        "mint_requests",
        ["signer", "nonce"],
        unique=False,
        postgresql_where=sa.text("nonce IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_mint_requests_signer_nonce", table_name="mint_requests")
    op.drop_column("mint_requests", "chain_id")
