"""`mint_requests.final_at`: when a request's outcome became final. A mint that reverted on
chain is `failed` at once but not final until its block is: a reorg may drop that block, and the
transaction sent again may then succeed. Until then the request still holds its album, so the
one-live-mint-per-album index counts a `failed` request only once it is final.

Existing `finalized` and `failed` rows are final (the minter used to treat both as terminal):
they get `final_at = updated_at`, so the new index holds exactly the rows the old one held.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 06:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ux_mint_requests_one_live_per_album"
OLD_LIVE = "NOT remint AND status <> 'failed'"
NEW_LIVE = "NOT remint AND (status <> 'failed' OR final_at IS NULL)"


def upgrade() -> None:
    op.add_column("mint_requests", sa.Column("final_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE mint_requests SET final_at = updated_at"
        " WHERE status IN ('finalized', 'failed') AND final_at IS NULL"
    )
    op.drop_index(INDEX, table_name="mint_requests", postgresql_where=sa.text(OLD_LIVE))
    op.create_index(
        INDEX, "mint_requests", ["album_id"], unique=True, postgresql_where=sa.text(NEW_LIVE)
    )


def downgrade() -> None:
    # The new index holds a superset of the old one's rows, so the old one cannot conflict.
    op.drop_index(INDEX, table_name="mint_requests", postgresql_where=sa.text(NEW_LIVE))
    op.create_index(
        INDEX, "mint_requests", ["album_id"], unique=True, postgresql_where=sa.text(OLD_LIVE)
    )
    op.drop_column("mint_requests", "final_at")
