"""Discograph: a reorg-safe read model, API and mint relayer for music-album NFTs."""

__version__ = "0.1.0"
