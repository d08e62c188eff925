"""Token events (album links, metadata updates) and the indexer's view of the chain.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 05:09:32.994925
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "token_events",
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("contract", sa.LargeBinary(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.LargeBinary(), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("tx_hash", sa.LargeBinary(), nullable=False),
        sa.Column("token_id", sa.Numeric(precision=78, scale=0), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("album_id", sa.UUID(), nullable=True),
        sa.Column("token_uri", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "kind IN ('album_minted', 'metadata_update')", name=op.f("ck_token_events_kind_known")
        ),
        sa.PrimaryKeyConstraint(
            "chain_id", "block_number", "log_index", "token_id", name=op.f("pk_token_events")
        ),
    )
    op.create_index(
        op.f("ix_token_events_token_history"),
        "token_events",
        ["chain_id", "contract", "token_id", "block_number"],
        unique=False,
    )
    op.create_index(op.f("ix_token_events_album_id"), "token_events", ["album_id"], unique=False)
    op.add_column(
        "nfts",
        sa.Column(
            "updated_block_hash",
            sa.LargeBinary(),
            server_default=sa.text("'\\x'::bytea"),
            nullable=False,
        ),
    )
    op.add_column(
        "nfts", sa.Column("updated_log_index", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column("checkpoints", sa.Column("head_block", sa.BigInteger(), nullable=True))
    op.add_column("checkpoints", sa.Column("safe_block", sa.BigInteger(), nullable=True))
    op.add_column("checkpoints", sa.Column("finalized_block", sa.BigInteger(), nullable=True))
    op.add_column(
        "checkpoints", sa.Column("block_timestamp", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("checkpoints", sa.Column("last_reorg_depth", sa.Integer(), nullable=True))
    op.add_column("checkpoints", sa.Column("last_reorg_block", sa.BigInteger(), nullable=True))
    op.add_column(
        "checkpoints", sa.Column("last_reorg_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("nfts", "updated_log_index")
    op.drop_column("nfts", "updated_block_hash")
    op.drop_column("checkpoints", "last_reorg_at")
    op.drop_column("checkpoints", "last_reorg_block")
    op.drop_column("checkpoints", "last_reorg_depth")
    op.drop_column("checkpoints", "block_timestamp")
    op.drop_column("checkpoints", "finalized_block")
    op.drop_column("checkpoints", "safe_block")
    op.drop_column("checkpoints", "head_block")
    op.drop_index(op.f("ix_token_events_album_id"), table_name="token_events")
    op.drop_index(op.f("ix_token_events_token_history"), table_name="token_events")
    op.drop_table("token_events")
