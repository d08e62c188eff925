"""Errors shared by every Discograph package (each package adds its own subclasses)."""


class DiscographError(Exception):
    """Base class of every error Discograph raises on purpose."""


class ConfigError(DiscographError):
    """A setting is missing or invalid; the message names the variable."""
