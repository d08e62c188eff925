"""The schema's source of truth: SQLAlchemy Core metadata (Alembic migrations follow it).

Storage choices (documented for analytics in docs/schema.md):
- addresses and hashes are `bytea` of their raw bytes (20 and 32), half the size of hex text
  and compared byte-wise; `encode(col, 'hex')` shows them, `'\\x…'::bytea` filters on them;
- token ids are `numeric(78,0)`: every uint256 fits;
- only canonical rows live in `transfers` and `nfts`: a reorg deletes orphaned ones.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

# Deterministic constraint names, so migrations can name what they drop.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ALBUM_STATUSES = ("draft", "minting", "minted", "failed")
CONTRACT_KINDS = ("album", "erc721")
TOKEN_EVENT_KINDS = ("album_minted", "metadata_update")
MINT_STATUSES = ("queued", "submitted", "mined", "confirmed", "finalized", "failed")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _address(name: str, *, nullable: bool = False) -> Column[bytes]:
    return Column(name, LargeBinary, nullable=nullable)


def _created_at() -> Column[object]:
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now())


def _updated_at() -> Column[object]:
    return Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now())


artists = Table(
    "artists",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("name", Text, nullable=False),
    _address("wallet", nullable=True),
    _created_at(),
    CheckConstraint("char_length(name) BETWEEN 1 AND 200", name="name_length"),
    CheckConstraint("wallet IS NULL OR octet_length(wallet) = 20", name="wallet_20_bytes"),
    Index(None, "wallet"),
)

albums = Table(
    "albums",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("artist_id", UUID(as_uuid=True), ForeignKey("artists.id"), nullable=False),
    Column("title", Text, nullable=False),
    Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("status", Text, nullable=False, server_default="draft"),
    _created_at(),
    _updated_at(),
    CheckConstraint(_in("status", ALBUM_STATUSES), name="status_known"),
    CheckConstraint("char_length(title) BETWEEN 1 AND 300", name="title_length"),
    # Keyset pagination: newest first, id breaks ties.
    Index(None, "created_at", "id"),
    Index(None, "artist_id", "created_at", "id"),
)

tracks = Table(
    "tracks",
    metadata,
    Column("album_id", UUID(as_uuid=True), ForeignKey("albums.id", ondelete="CASCADE")),
    Column("position", Integer, nullable=False),
    Column("title", Text, nullable=False),
    Column("duration_s", Integer, nullable=True),
    Column("isrc", Text, nullable=True),
    PrimaryKeyConstraint("album_id", "position"),
    CheckConstraint("position >= 1", name="position_positive"),
    CheckConstraint("duration_s IS NULL OR duration_s >= 0", name="duration_non_negative"),
    CheckConstraint("isrc IS NULL OR isrc ~ '^[A-Z]{2}[A-Z0-9]{3}[0-9]{7}$'", name="isrc_format"),
)

contracts = Table(
    "contracts",
    metadata,
    Column("chain_id", BigInteger, nullable=False),
    _address("address"),
    Column("kind", Text, nullable=False),
    Column("start_block", BigInteger, nullable=False, server_default="0"),
    _created_at(),
    PrimaryKeyConstraint("chain_id", "address"),
    CheckConstraint(_in("kind", CONTRACT_KINDS), name="kind_known"),
    CheckConstraint("octet_length(address) = 20", name="address_20_bytes"),
)

blocks = Table(
    "blocks",
    metadata,
    Column("chain_id", BigInteger, nullable=False),
    Column("number", BigInteger, nullable=False),
    Column("hash", LargeBinary, nullable=False),
    Column("parent_hash", LargeBinary, nullable=False),
    Column("timestamp", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("chain_id", "number"),
    UniqueConstraint("chain_id", "hash"),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("chain_id", BigInteger, primary_key=True, autoincrement=False),
    # The last block whose rows are committed (everything up to it is indexed, exactly once).
    Column("block_number", BigInteger, nullable=False),
    Column("block_hash", LargeBinary, nullable=False),
    # The indexer's view of the chain when it committed: head, safe and finalized block numbers
    # (they drive the `finality` of API answers).
    Column("head_block", BigInteger, nullable=True),
    Column("safe_block", BigInteger, nullable=True),
    Column("finalized_block", BigInteger, nullable=True),
    Column("block_timestamp", DateTime(timezone=True), nullable=True),
    Column("last_reorg_depth", Integer, nullable=True),
    Column("last_reorg_block", BigInteger, nullable=True),
    Column("last_reorg_at", DateTime(timezone=True), nullable=True),
    # Bumped by every rollback (reorg or reindex): with block number and hash it versions
    # cached API answers, so a version is never reused after the chain went back.
    Column("rollbacks", BigInteger, nullable=False, server_default="0"),
    _updated_at(),
)

transfers = Table(
    "transfers",
    metadata,
    Column("chain_id", BigInteger, nullable=False),
    _address("contract"),
    Column("block_number", BigInteger, nullable=False),
    Column("block_hash", LargeBinary, nullable=False),
    Column("log_index", Integer, nullable=False),
    Column("tx_hash", LargeBinary, nullable=False),
    _address("from_address"),
    _address("to_address"),
    Column("token_id", Numeric(78, 0), nullable=False),
    PrimaryKeyConstraint("chain_id", "block_number", "log_index"),
    # History of one token, newest first; also "state at block N" for one token.
    Index(None, "chain_id", "contract", "token_id", "block_number", "log_index"),
    # Activity of an address (either side), and of a contract.
    Index(None, "chain_id", "from_address", "block_number", "log_index"),
    Index(None, "chain_id", "to_address", "block_number", "log_index"),
    Index(None, "chain_id", "contract", "block_number", "log_index"),
)

# Album links and metadata updates, kept so that a reorg can recompute `nfts.album_id` and
# `nfts.token_uri` from the events that survive it.
token_events = Table(
    "token_events",
    metadata,
    Column("chain_id", BigInteger, nullable=False),
    _address("contract"),
    Column("block_number", BigInteger, nullable=False),
    Column("block_hash", LargeBinary, nullable=False),
    Column("log_index", Integer, nullable=False),
    Column("tx_hash", LargeBinary, nullable=False),
    Column("token_id", Numeric(78, 0), nullable=False),
    Column("kind", Text, nullable=False),
    Column("album_id", UUID(as_uuid=True), nullable=True),
    Column("token_uri", Text, nullable=True),
    # One log can touch many tokens (ERC-4906 BatchMetadataUpdate), hence token_id in the key.
    PrimaryKeyConstraint("chain_id", "block_number", "log_index", "token_id"),
    CheckConstraint(_in("kind", TOKEN_EVENT_KINDS), name="kind_known"),
    Index("ix_token_events_token_history", "chain_id", "contract", "token_id", "block_number"),
    Index(None, "album_id"),
)

nfts = Table(
    "nfts",
    metadata,
    Column("chain_id", BigInteger, nullable=False),
    _address("contract"),
    Column("token_id", Numeric(78, 0), nullable=False),
    _address("owner"),
    Column("album_id", UUID(as_uuid=True), nullable=True),
    Column("token_uri", Text, nullable=True),
    Column("minted_block", BigInteger, nullable=False),
    Column("minted_tx", LargeBinary, nullable=False),
    # Provenance of the current state: the block (and hash, log index) of the last event applied.
    Column("updated_block", BigInteger, nullable=False),
    Column("updated_block_hash", LargeBinary, nullable=False, server_default=text("'\\x'::bytea")),
    Column("updated_log_index", Integer, nullable=False, server_default="0"),
    # The token's last transfer (its `to` is `owner`), kept here so that owner pages and token
    # reads need no lookup into `transfers`.
    Column("last_transfer_block", BigInteger, nullable=True),
    Column("last_transfer_tx", LargeBinary, nullable=True),
    _address("last_transfer_from", nullable=True),
    PrimaryKeyConstraint("chain_id", "contract", "token_id"),
    # NFTs of an owner; holders of a contract (grouped by owner).
    Index(None, "chain_id", "owner", "contract", "token_id"),
    Index(None, "chain_id", "contract", "owner"),
    Index(None, "album_id"),
)

mint_requests = Table(
    "mint_requests",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("album_id", UUID(as_uuid=True), ForeignKey("albums.id"), nullable=False),
    Column("requester", Text, nullable=False),
    _address("to_address"),
    Column("token_uri", Text, nullable=False),
    Column("idempotency_key", Text, nullable=True),
    Column("status", Text, nullable=False, server_default="queued"),
    # An admin's deliberate second mint of an album (others: one live mint per album).
    Column("remint", Boolean, nullable=False, server_default=text("false")),
    # The chain the mint is for: set by the API when it knows the chain (CHAIN_ID or the indexed
    # chain), else by the minter when it sends.
    Column("chain_id", BigInteger, nullable=True),
    # Filled in by the minter: the contract and signer it sent with, the nonce it allocated.
    _address("contract", nullable=True),
    _address("signer", nullable=True),
    Column("nonce", BigInteger, nullable=True),
    # The transaction in force (the latest broadcast; every signed variant is in mint_txs).
    Column("tx_hash", LargeBinary, nullable=True),
    Column("block_number", BigInteger, nullable=True),
    Column("block_hash", LargeBinary, nullable=True),
    Column("token_id", Numeric(78, 0), nullable=True),
    Column("error", Text, nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("submitted_at", DateTime(timezone=True), nullable=True),
    # When the outcome became final: `finalized`, or `failed` for good (a revert once its block
    # is final). NULL while the chain may still change it. Migration 0008.
    Column("final_at", DateTime(timezone=True), nullable=True),
    _created_at(),
    _updated_at(),
    CheckConstraint(_in("status", MINT_STATUSES), name="status_known"),
    UniqueConstraint("requester", "idempotency_key"),
    # The minter's queue scan: oldest queued first; and open requests by status.
    Index(None, "status", "created_at"),
    Index(None, "album_id"),
    Index(None, "tx_hash"),
    # The minter's nonce reconciliation and gap checks: a signer's requests by nonce.
    Index(
        "ix_mint_requests_signer_nonce",
        "signer",
        "nonce",
        postgresql_where=text("nonce IS NOT NULL"),
    ),
    # One live mint per album, whatever the races: a second one (not an admin re-mint) is
    # refused by the database; a failed mint frees the album for another attempt once its
    # failure is final (a revert whose block a reorg may still drop holds the album).
    Index(
        "ux_mint_requests_one_live_per_album",
        "album_id",
        unique=True,
        postgresql_where=text("NOT remint AND (status <> 'failed' OR final_at IS NULL)"),
    ),
)

# Every signed transaction of a mint: the first, its fee-bumped replacements (same nonce) and
# so the receipts to look for; the minter re-broadcasts `raw_tx` after a reorg dropped it.
mint_txs = Table(
    "mint_txs",
    metadata,
    Column("tx_hash", LargeBinary, primary_key=True),
    Column(
        "mint_id",
        UUID(as_uuid=True),
        ForeignKey("mint_requests.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("nonce", BigInteger, nullable=False),
    Column("raw_tx", LargeBinary, nullable=False),
    Column("max_fee_per_gas", Numeric(78, 0), nullable=False),
    Column("max_priority_fee_per_gas", Numeric(78, 0), nullable=False),
    Column("gas_limit", BigInteger, nullable=False),
    _created_at(),
    Index(None, "mint_id", "created_at"),
)

# The nonce of each signing key, allocated under this row's lock (reconciled with the node's
# pending count when the minter starts): no gap, no duplicate, across restarts.
signers = Table(
    "signers",
    metadata,
    Column("chain_id", BigInteger, nullable=False),
    _address("address"),
    Column("next_nonce", BigInteger, nullable=False),
    _updated_at(),
    PrimaryKeyConstraint("chain_id", "address"),
)

# Idempotency-Key of the write endpoints, per subject: a claim (`running`) committed before
# the work, then the answer (`done`) committed with the work, so a replay is exact and a
# crash between leaves only a claim that expires.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("subject", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("method", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("request_hash", LargeBinary, nullable=False),
    Column("state", Text, nullable=False, server_default="running"),
    Column("response_status", Integer, nullable=True),
    Column("response_body", LargeBinary, nullable=True),
    _created_at(),
    _updated_at(),
    PrimaryKeyConstraint("subject", "key"),
    CheckConstraint("state IN ('running', 'done')", name="state_known"),
    Index(None, "created_at"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("seq", BigInteger, Identity(always=True), primary_key=True),
    Column("chain_id", BigInteger, nullable=False),
    Column("kind", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    _created_at(),
    # The lifecycle of one mint request (`GET /mints/{id}`): its `mint_status` events.
    Index(
        "ix_outbox_mint_status",
        text("(payload ->> 'mint_id')"),
        "seq",
        postgresql_where=text("kind = 'mint_status'"),
    ),
)

# One row per `discograph audit` (migration 0009): the projection compared with `ownerOf` /
# `tokenURI` read from the node at one finalized block. `kinds` counts the differences by kind
# (`owner`, `token_uri`, `missing`, `extra`); `/status` shows the newest row of the chain.
audit_runs = Table(
    "audit_runs",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("chain_id", BigInteger, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("finalized_block", BigInteger, nullable=False),
    Column("block_hash", LargeBinary, nullable=False),
    Column("tokens", BigInteger, nullable=False),
    Column("differences", BigInteger, nullable=False),
    Column("kinds", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("seconds", Double, nullable=False),
    CheckConstraint("tokens >= 0 AND differences >= 0", name="counts_non_negative"),
    # The newest run of a chain.
    Index(None, "chain_id", "at"),
)
