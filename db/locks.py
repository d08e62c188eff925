"""Advisory-lock ids shared by every writer (light module: no SQLAlchemy import)."""

# Every outbox writer takes pg_advisory_xact_lock(OUTBOX_LOCK_ID) so that seqs become visible
# in order (DESIGN.md, Schema).
OUTBOX_LOCK_ID = 0x44_69_73_63_6F_01  # "Disco" + 1

# LISTEN/NOTIFY channels. The indexer notifies both inside its write transactions, so the
# notifications arrive exactly when the rows become visible (on commit).
OUTBOX_CHANNEL = "discograph_outbox"  # payload "<chain_id>:<messages appended>:<last seq>"
CHECKPOINT_CHANNEL = "discograph_checkpoint"  # payload "<chain_id>:<block>:<0x block hash>"
MINT_QUEUED_CHANNEL = "discograph_mint_queued"  # payload: the queued mint's id; wakes the minter
# The feed publisher: one API process per database turns outbox rows into Redis messages.
FEED_PUBLISHER_LOCK_ID = 0x44_69_73_63_6F_02
