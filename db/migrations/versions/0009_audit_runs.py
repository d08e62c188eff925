"""`audit_runs`: one row per `discograph audit`, the projection compared with the chain at a
finalized block. `/status` shows the newest row and the API's metrics expose it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_runs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finalized_block", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.LargeBinary(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("differences", sa.BigInteger(), nullable=False),
        sa.Column(
            "kinds",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("seconds", sa.Double(), nullable=False),
        sa.CheckConstraint(
            "tokens >= 0 AND differences >= 0", name=op.f("ck_audit_runs_counts_non_negative")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_runs")),
    )
    op.create_index(
        op.f("ix_audit_runs_chain_id_at"), "audit_runs", ["chain_id", "at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_audit_runs_chain_id_at"), table_name="audit_runs")
    op.drop_table("audit_runs")
