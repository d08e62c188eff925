"""Child processes that never outlive us: the dev stack's anvil, Postgres and Valkey.

Each child is started with `PR_SET_PDEATHSIG`, so the kernel signals it when the process that
started it dies, even by SIGKILL, and it is stopped explicitly (polite signal, then SIGKILL) on
every normal or exceptional exit.

Linux sends the parent-death signal when the *thread* that forked the child ends, so start
children from a long-lived thread (the main thread), never from `asyncio.to_thread` workers.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from discograph.errors import DiscographError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class ServiceStartError(DiscographError):
    """A child service did not come up; the message carries the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host` (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def _die_with_parent(sig: int) -> Callable[[], None]:
    parent = os.getpid()

    def preexec() -> None:
        # Runs in the child after fork (and after any setuid, which would clear the setting).
        # A process group of its own: Ctrl-C in a terminal (or `timeout -s INT`) signals the
        # foreground group, and the parent must stop its services itself, in order (the API
        # and the indexer before the Postgres they use), not have them all stop at once.
        os.setpgid(0, 0)
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


class ChildProcess:
    """One started service: its `Popen`, its log file and how to stop it."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        stop_signal: int = signal.SIGTERM,
        user: str | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.stop_signal = stop_signal
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            self.popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                user=user,
                env=env,
                cwd=cwd,
                preexec_fn=_die_with_parent(stop_signal),
            )
        log.debug("started %s pid=%d", name, self.popen.pid)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `ready()` until true; fail with the log tail if the child exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise ServiceStartError(
                    f"{self.name} exited with code {self.popen.returncode} before {what}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if ready():
                return
            time.sleep(0.05)
        self.stop()
        raise ServiceStartError(
            f"{self.name} not {what} after {timeout:.0f}s; log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Ask politely, then SIGKILL; always reaps the child."""
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(self.stop_signal)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs, killing it", self.name, timeout)
            self.popen.kill()
            self.popen.wait()
        log.debug("stopped %s", self.name)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a worker process someone else started (uvicorn's): be sent `sig` when the parent
    dies, even by SIGKILL."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def exit_cleanly_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C: every `finally` and context manager stops what it
    started (child services included) before the process exits with 128 + 15."""
    signal.signal(signal.SIGTERM, _exit_on_signal)
