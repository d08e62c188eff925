"""Postgres schema (SQLAlchemy Core metadata), migrations and queries."""
