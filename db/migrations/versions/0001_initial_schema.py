"""Initial schema: catalog (artists, albums, tracks), chain projection, mint queue, outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-26 04:59:56.592296
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "artists",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("wallet", sa.LargeBinary(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "char_length(name) BETWEEN 1 AND 200", name=op.f("ck_artists_name_length")
        ),
        sa.CheckConstraint(
            "wallet IS NULL OR octet_length(wallet) = 20", name=op.f("ck_artists_wallet_20_bytes")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artists")),
    )
    op.create_index(op.f("ix_artists_wallet"), "artists", ["wallet"], unique=False)
    op.create_table(
        "blocks",
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.Column("parent_hash", sa.LargeBinary(), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("chain_id", "number", name=op.f("pk_blocks")),
        sa.UniqueConstraint("chain_id", "hash", name=op.f("uq_blocks_chain_id_hash")),
    )
    op.create_table(
        "checkpoints",
        sa.Column("chain_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.LargeBinary(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("chain_id", name=op.f("pk_checkpoints")),
    )
    op.create_table(
        "contracts",
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("address", sa.LargeBinary(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("start_block", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("kind IN ('album', 'erc721')", name=op.f("ck_contracts_kind_known")),
        sa.CheckConstraint(
            "octet_length(address) = 20", name=op.f("ck_contracts_address_20_bytes")
        ),
        sa.PrimaryKeyConstraint("chain_id", "address", name=op.f("pk_contracts")),
    )
    op.create_table(
        "nfts",
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("contract", sa.LargeBinary(), nullable=False),
        sa.Column("token_id", sa.Numeric(precision=78, scale=0), nullable=False),
        sa.Column("owner", sa.LargeBinary(), nullable=False),
        sa.Column("album_id", sa.UUID(), nullable=True),
        sa.Column("token_uri", sa.Text(), nullable=True),
        sa.Column("minted_block", sa.BigInteger(), nullable=False),
        sa.Column("minted_tx", sa.LargeBinary(), nullable=False),
        sa.Column("updated_block", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("chain_id", "contract", "token_id", name=op.f("pk_nfts")),
    )
    op.create_index(op.f("ix_nfts_album_id"), "nfts", ["album_id"], unique=False)
    op.create_index(
        op.f("ix_nfts_chain_id_contract_owner"),
        "nfts",
        ["chain_id", "contract", "owner"],
        unique=False,
    )
    op.create_index(
        op.f("ix_nfts_chain_id_owner_contract_token_id"),
        "nfts",
        ["chain_id", "owner", "contract", "token_id"],
        unique=False,
    )
    op.create_table(
        "outbox",
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_outbox")),
    )
    op.create_table(
        "transfers",
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("contract", sa.LargeBinary(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.LargeBinary(), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("tx_hash", sa.LargeBinary(), nullable=False),
        sa.Column("from_address", sa.LargeBinary(), nullable=False),
        sa.Column("to_address", sa.LargeBinary(), nullable=False),
        sa.Column("token_id", sa.Numeric(precision=78, scale=0), nullable=False),
        sa.PrimaryKeyConstraint("chain_id", "block_number", "log_index", name=op.f("pk_transfers")),
    )
    op.create_index(
        op.f("ix_transfers_chain_id_contract_block_number_log_index"),
        "transfers",
        ["chain_id", "contract", "block_number", "log_index"],
        unique=False,
    )
    op.create_index(
        op.f("ix_transfers_chain_id_contract_token_id_block_number_log_index"),
        "transfers",
        ["chain_id", "contract", "token_id", "block_number", "log_index"],
        unique=False,
    )
    op.create_index(
        op.f("ix_transfers_chain_id_from_address_block_number_log_index"),
        "transfers",
        ["chain_id", "from_address", "block_number", "log_index"],
        unique=False,
    )
    op.create_index(
        op.f("ix_transfers_chain_id_to_address_block_number_log_index"),
        "transfers",
        ["chain_id", "to_address", "block_number", "log_index"],
        unique=False,
    )
    op.create_table(
        "albums",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("artist_id", sa.UUID(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("status", sa.Text(), server_default="draft", nullable=False),
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
            "status IN ('draft', 'minting', 'minted', 'failed')",
            name=op.f("ck_albums_status_known"),
        ),
        sa.CheckConstraint(
            "char_length(title) BETWEEN 1 AND 300", name=op.f("ck_albums_title_length")
        ),
        sa.ForeignKeyConstraint(
            ["artist_id"], ["artists.id"], name=op.f("fk_albums_artist_id_artists")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_albums")),
    )
    op.create_index(
        op.f("ix_albums_artist_id_created_at_id"),
        "albums",
        ["artist_id", "created_at", "id"],
        unique=False,
    )
    op.create_index(op.f("ix_albums_created_at_id"), "albums", ["created_at", "id"], unique=False)
    op.create_table(
        "mint_requests",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("album_id", sa.UUID(), nullable=False),
        sa.Column("requester", sa.Text(), nullable=False),
        sa.Column("to_address", sa.LargeBinary(), nullable=False),
        sa.Column("token_uri", sa.Text(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), server_default="queued", nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=True),
        sa.Column("tx_hash", sa.LargeBinary(), nullable=True),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("block_hash", sa.LargeBinary(), nullable=True),
        sa.Column("token_id", sa.Numeric(precision=78, scale=0), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
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
            "status IN ('queued', 'submitted', 'mined', 'confirmed', 'finalized', 'failed')",
            name=op.f("ck_mint_requests_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["album_id"], ["albums.id"], name=op.f("fk_mint_requests_album_id_albums")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mint_requests")),
        sa.UniqueConstraint(
            "requester", "idempotency_key", name=op.f("uq_mint_requests_requester_idempotency_key")
        ),
    )
    op.create_index(op.f("ix_mint_requests_album_id"), "mint_requests", ["album_id"], unique=False)
    op.create_index(
        op.f("ix_mint_requests_status_created_at"),
        "mint_requests",
        ["status", "created_at"],
        unique=False,
    )
    op.create_index(op.f("ix_mint_requests_tx_hash"), "mint_requests", ["tx_hash"], unique=False)
    op.create_table(
        "tracks",
        sa.Column("album_id", sa.UUID(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("duration_s", sa.Integer(), nullable=True),
        sa.Column("isrc", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "isrc IS NULL OR isrc ~ '^[A-Z]{2}[A-Z0-9]{3}[0-9]{7}$'",
            name=op.f("ck_tracks_isrc_format"),
        ),
        sa.CheckConstraint(
            "duration_s IS NULL OR duration_s >= 0", name=op.f("ck_tracks_duration_non_negative")
        ),
        sa.CheckConstraint("position >= 1", name=op.f("ck_tracks_position_positive")),
        sa.ForeignKeyConstraint(
            ["album_id"], ["albums.id"], name=op.f("fk_tracks_album_id_albums"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("album_id", "position", name=op.f("pk_tracks")),
    )


def downgrade() -> None:
    op.drop_table("tracks")
    op.drop_index(op.f("ix_mint_requests_tx_hash"), table_name="mint_requests")
    op.drop_index(op.f("ix_mint_requests_status_created_at"), table_name="mint_requests")
    op.drop_index(op.f("ix_mint_requests_album_id"), table_name="mint_requests")
    op.drop_table("mint_requests")
    op.drop_index(op.f("ix_albums_created_at_id"), table_name="albums")
    op.drop_index(op.f("ix_albums_artist_id_created_at_id"), table_name="albums")
    op.drop_table("albums")
    op.drop_index(
        op.f("ix_transfers_chain_id_to_address_block_number_log_index"), table_name="transfers"
    )
    op.drop_index(
        op.f("ix_transfers_chain_id_from_address_block_number_log_index"), table_name="transfers"
    )
    op.drop_index(
        op.f("ix_transfers_chain_id_contract_token_id_block_number_log_index"),
        table_name="transfers",
    )
    op.drop_index(
        op.f("ix_transfers_chain_id_contract_block_number_log_index"), table_name="transfers"
    )
    op.drop_table("transfers")
    op.drop_table("outbox")
    op.drop_index(op.f("ix_nfts_chain_id_owner_contract_token_id"), table_name="nfts")
    op.drop_index(op.f("ix_nfts_chain_id_contract_owner"), table_name="nfts")
    op.drop_index(op.f("ix_nfts_album_id"), table_name="nfts")
    op.drop_table("nfts")
    op.drop_table("contracts")
    op.drop_table("checkpoints")
    op.drop_table("blocks")
    op.drop_index(op.f("ix_artists_wallet"), table_name="artists")
    op.drop_table("artists")
