"""Litestar read/write API and websocket feed (built in the API issues)."""
