"""Write path: mint transactions, signers (nonces), idempotency keys, one live mint per album.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 07:56:13.825625
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("method", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.Text(), server_default="running", nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.LargeBinary(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "state IN ('running', 'done')", name=op.f("ck_idempotency_keys_state_known")
        ),
        sa.PrimaryKeyConstraint("subject", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index(
        op.f("ix_idempotency_keys_created_at"), "idempotency_keys", ["created_at"], unique=False
    )
    op.create_table(
        "signers",
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("address", sa.LargeBinary(), nullable=False),
        sa.Column("next_nonce", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("chain_id", "address", name=op.f("pk_signers")),
    )
    op.create_table(
        "mint_txs",
        sa.Column("tx_hash", sa.LargeBinary(), nullable=False),
        sa.Column("mint_id", sa.UUID(), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.Column("raw_tx", sa.LargeBinary(), nullable=False),
        sa.Column("max_fee_per_gas", sa.Numeric(precision=78, scale=0), nullable=False),
        sa.Column("max_priority_fee_per_gas", sa.Numeric(precision=78, scale=0), nullable=False),
        sa.Column("gas_limit", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["mint_id"],
            ["mint_requests.id"],
            name=op.f("fk_mint_txs_mint_id_mint_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tx_hash", name=op.f("pk_mint_txs")),
    )
    op.create_index(
        op.f("ix_mint_txs_mint_id_created_at"), "mint_txs", ["mint_id", "created_at"], unique=False
    )
    op.add_column(
        "mint_requests",
        sa.Column("remint", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.add_column("mint_requests", sa.Column("contract", sa.LargeBinary(), nullable=True))
    op.add_column("mint_requests", sa.Column("signer", sa.LargeBinary(), nullable=True))
    op.add_column(
        "mint_requests", sa.Column("attempts", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        "mint_requests", sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index(
        "ux_mint_requests_one_live_per_album",
        "mint_requests",
        ["album_id"],
        unique=True,
        postgresql_where=sa.text("NOT remint AND status <> 'failed'"),
    )


def downgrade() -> None:
    op.drop_index(
        "ux_mint_requests_one_live_per_album",
        table_name="mint_requests",
        postgresql_where=sa.text("NOT remint AND status <> 'failed'"),
    )
    op.drop_column("mint_requests", "submitted_at")
    op.drop_column("mint_requests", "attempts")
    op.drop_column("mint_requests", "signer")
    op.drop_column("mint_requests", "contract")
    op.drop_column("mint_requests", "remint")
    op.drop_index(op.f("ix_mint_txs_mint_id_created_at"), table_name="mint_txs")
    op.drop_table("mint_txs")
    op.drop_table("signers")
    op.drop_index(op.f("ix_idempotency_keys_created_at"), table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
