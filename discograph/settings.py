"""The one settings struct, read from the environment and `.env`, validated at start.

Every process (CLI, indexer, API, minter) builds a `Settings` once and passes it down; nothing
reads `os.environ` anywhere else. A bad value fails fast with the variable's name, and secrets
(`JWT_SECRET`, `MINTER_PRIVATE_KEY`, passwords inside URLs) never print.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from discograph.encoding import parse_address
from discograph.errors import ConfigError

_PRIVATE_KEY_RE = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
JWT_ALGORITHMS = ("HS256", "RS256", "ES256")
# A `limits` rate string: "<count>/<unit>" or "<count> per <n> <unit>s".
_RATE_RE = re.compile(r"^\s*\d+\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day)s?\s*$", re.IGNORECASE)

# Variables whose value is a comma-separated list.
_LIST_VARS = frozenset({"RPC_URL", "EXTRA_CONTRACTS", "WS_ALLOWED_ORIGINS"})
# A duration: seconds, or a number with a unit (s, m, h, d): "604800", "7d", "12h".
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
# Single URLs that may carry a password: `repr` redacts them.
_URL_FIELDS = frozenset({"database_url", "read_database_url", "redis_url", "rpc_ws_url"})
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class Secret:
    """A string that never shows itself in `repr`, `str`, logs or errors; `.reveal()` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def redact_url(url: str) -> str:
    """Drop the password (and any token-looking query) from a URL so it can be printed."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    query = "***" if parts.query else ""
    # Providers put API keys in the path too (`/v3/<key>`): keep only a short first segment.
    segments = [s for s in parts.path.split("/") if s]
    path = parts.path
    if any(len(s) >= 16 for s in segments):
        path = "/" + "/".join(s if len(s) < 16 else "***" for s in segments)
    return urlunsplit((parts.scheme, netloc, path, query, ""))


Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]


class Settings(msgspec.Struct, frozen=True, kw_only=True, rename="upper"):
    """Every setting of DESIGN.md; attribute `rpc_url` is variable `RPC_URL` and so on."""

    database_url: str | None = None
    read_database_url: str | None = None
    redis_url: str | None = None
    rpc_url: tuple[str, ...] = ()
    rpc_ws_url: str | None = None
    chain_id: Positive | None = None
    album_contract: str | None = None
    extra_contracts: tuple[str, ...] = ()
    start_block: NonNegative = 0
    confirmations: NonNegative = 12
    reorg_window: Positive = 128
    poll_interval: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    rpc_timeout: Annotated[float, msgspec.Meta(gt=0, le=600)] = 10.0
    ready_max_lag: NonNegative = 20
    jwt_secret: Secret | None = None
    jwt_algorithm: str = "HS256"
    jwt_public_key_file: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: Annotated[float, msgspec.Meta(ge=0, le=300)] = 30.0
    rate_limit_writes: str = "60/minute"
    rate_limit_reads: str = "1200/minute"
    public_url: str | None = None
    mint_replace_after: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    mint_fee_cap: Annotated[float, msgspec.Meta(ge=1.2, le=1000)] = 8.0
    minter_private_key: Secret | None = None
    minter_key_file: str | None = None
    log_level: str = "INFO"
    http_host: str = "127.0.0.1"
    http_port: Port = 8000
    metrics_port: Port = 9100
    data_dir: str = ".discograph"
    outbox_retention: str = "7d"
    ws_allowed_origins: tuple[str, ...] = ()
    ws_max_per_ip: Positive = 100
    ws_queue_size: Annotated[int, msgspec.Meta(ge=16, le=1_000_000)] = 4096
    ws_heartbeat: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 20.0
    ws_idle_timeout: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 120.0
    ws_max_message: Annotated[int, msgspec.Meta(ge=256, le=1_048_576)] = 4096
    ws_auth_wait: Annotated[float, msgspec.Meta(ge=0, le=30)] = 0.5
    ws_compression: str = "on"

    def __post_init__(self) -> None:
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        for url in self.rpc_url:
            if not url.startswith(("http://", "https://")):
                raise ConfigError("RPC_URL: every entry must be an http(s):// URL")
        if self.rpc_ws_url and not self.rpc_ws_url.startswith(("ws://", "wss://")):
            raise ConfigError("RPC_WS_URL must be a ws:// or wss:// URL")
        if self.database_url and not self.database_url.startswith(("postgres://", "postgresql://")):
            raise ConfigError("DATABASE_URL must be a postgresql:// URL")
        if self.read_database_url and not self.read_database_url.startswith(
            ("postgres://", "postgresql://")
        ):
            raise ConfigError("READ_DATABASE_URL must be a postgresql:// URL")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("REDIS_URL must be a redis:// or rediss:// URL")
        if self.album_contract is not None:
            _check_address("ALBUM_CONTRACT", self.album_contract)
        for address in self.extra_contracts:
            _check_address("EXTRA_CONTRACTS", address)
        if self.minter_private_key is not None and not _PRIVATE_KEY_RE.match(
            self.minter_private_key.reveal()
        ):
            # The message names the variable, never the value.
            raise ConfigError("MINTER_PRIVATE_KEY must be 32 bytes of hex")
        if self.jwt_algorithm not in JWT_ALGORITHMS:
            raise ConfigError(f"JWT_ALGORITHM must be one of {', '.join(JWT_ALGORITHMS)}")
        if self.jwt_algorithm != "HS256" and self.jwt_public_key_file is None:
            raise ConfigError(f"JWT_ALGORITHM={self.jwt_algorithm} needs JWT_PUBLIC_KEY_FILE")
        if self.jwt_algorithm == "HS256" and self.jwt_public_key_file is not None:
            raise ConfigError("JWT_PUBLIC_KEY_FILE needs JWT_ALGORITHM=RS256 or ES256")
        for variable, value in (
            ("RATE_LIMIT_WRITES", self.rate_limit_writes),
            ("RATE_LIMIT_READS", self.rate_limit_reads),
        ):
            if value != "off" and not _RATE_RE.match(value):
                raise ConfigError(f"{variable} must look like 60/minute, or be off")
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            raise ConfigError("PUBLIC_URL must be an http(s):// URL")
        if self.minter_private_key is not None and self.minter_key_file is not None:
            raise ConfigError("set MINTER_PRIVATE_KEY or MINTER_KEY_FILE, not both")
        if not _DURATION_RE.match(self.outbox_retention):
            raise ConfigError("OUTBOX_RETENTION must be seconds or a number with s/m/h/d (7d)")
        if self.ws_compression not in ("on", "off"):
            raise ConfigError("WS_COMPRESSION must be on or off")
        for origin in self.ws_allowed_origins:
            if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
                raise ConfigError(
                    "WS_ALLOWED_ORIGINS: each entry is * or a scheme://host[:port] origin"
                )

    def __repr__(self) -> str:
        shown = []
        for field in self.__struct_fields__:
            value = getattr(self, field)
            if field in _URL_FIELDS and value:
                value = redact_url(value)
            elif field == "rpc_url":
                value = tuple(redact_url(url) for url in value)
            shown.append(f"{field.upper()}={value!r}")
        return f"Settings({', '.join(shown)})"

    def minter_key(self) -> Secret | None:
        """The signing key from `MINTER_PRIVATE_KEY` or the file `MINTER_KEY_FILE` names."""
        if self.minter_private_key is not None:
            return self.minter_private_key
        if self.minter_key_file is None:
            return None
        try:
            text = Path(self.minter_key_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"MINTER_KEY_FILE cannot be read: {exc.strerror}") from None
        if not _PRIVATE_KEY_RE.match(text):
            raise ConfigError("MINTER_KEY_FILE must hold 32 bytes of hex")
        return Secret(text)

    def outbox_retention_seconds(self) -> float:
        """`OUTBOX_RETENTION` in seconds."""
        match = _DURATION_RE.match(self.outbox_retention)
        assert match is not None  # checked in __post_init__
        return float(match.group(1)) * _DURATION_UNITS[match.group(2)]

    def rate_limit(self, kind: str) -> str | None:
        """`RATE_LIMIT_WRITES` / `RATE_LIMIT_READS` as a `limits` string; None when off."""
        value: str = getattr(self, f"rate_limit_{kind}")
        return None if value == "off" else value

    def public_base_url(self) -> str:
        """Where clients reach the API (album metadata URLs point here)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.http_host}:{self.http_port}"

    def with_values(self, **changes: Any) -> Settings:
        """A copy with some values replaced (the dev stack fills in the URLs it started)."""
        return msgspec.structs.replace(self, **changes)


def _check_address(variable: str, value: str) -> None:
    try:
        parse_address(value)
    except ValueError as exc:
        raise ConfigError(f"{variable}: {value!r}: {exc}") from None


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a `.env` file: `NAME=value` lines, `#` comments, optional quotes, `export ` prefix."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        name, sep, value = line.partition("=")
        if not sep or not name.strip().isidentifier():
            raise ConfigError(f"{path}:{number}: expected NAME=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def _dec_hook(type_: type, obj: Any) -> Any:
    if type_ is Secret and isinstance(obj, str):
        return Secret(obj)
    raise NotImplementedError


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: Path | str | None = Path(".env")
) -> Settings:
    """Build `Settings` from the environment, then `.env` (the environment wins)."""
    names = {field.upper() for field in Settings.__struct_fields__}
    merged: dict[str, str] = {}
    if env_file is not None:
        merged.update(read_env_file(Path(env_file)))
    merged.update(os.environ if environ is None else environ)
    raw: dict[str, Any] = {}
    for name in names:
        value = merged.get(name)
        if value is None or value.strip() == "":
            continue  # unset or empty → the default
        value = value.strip()
        if name in _LIST_VARS:
            raw[name] = [item.strip() for item in value.split(",") if item.strip()]
        else:
            raw[name] = value
    try:
        return msgspec.convert(raw, Settings, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(exc)) from None


def _explain(exc: msgspec.ValidationError) -> str:
    """Turn msgspec's `... - at `$.NAME`` into `NAME: ...` without echoing the value."""
    message = str(exc)
    match = re.search(r"at `\$\.([A-Z_]+)", message)
    if match is None:
        return f"invalid settings: {message}"
    return f"{match.group(1)}: {message.split(' - at ')[0]}"
