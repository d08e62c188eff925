"""An index on the outbox's `mint_status` events by mint id (the lifecycle of a mint request).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_outbox_mint_status",
        "outbox",
        [sa.text("(payload ->> 'mint_id')"), "seq"],
        unique=False,
        postgresql_where=sa.text("kind = 'mint_status'"),
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_mint_status", table_name="outbox")
