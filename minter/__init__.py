"""Mint queue worker: nonces, submission, receipt tracking (built in the write-path issue)."""
