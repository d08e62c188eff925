"""Discograph's own processes for multi-process tests: `discograph index`, `api` and `minter`
started as operators start them, with their output in a log file the test can read."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from discograph.processes import ChildProcess, free_port
from discograph.settings import Settings
from tests.conftest import REPO_ROOT, api_env

SETTINGS_VARS = {name.upper() for name in Settings.__struct_fields__}


def cli_env(**settings: str) -> dict[str, str]:
    """This process's environment without any Discograph setting, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARS}
    env.update(PYTHONPATH=str(REPO_ROOT), METRICS_PORT="0", **settings)
    return env


class CliProcess(ChildProcess):
    """`discograph <command>` as a child process; `output()` is what it has logged so far."""

    def __init__(self, name: str, command: str, env: dict[str, str], folder: Path) -> None:
        argv = [sys.executable, "-m", "discograph.cli", "--env-file", "/dev/null", command]
        super().__init__(name, argv, log_path=folder / f"{name}.log", env=env, cwd=folder)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        if self.running():
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)


def answers(url: str) -> bool:
    """True once `url`'s /health/live answers 200."""
    try:
        with urllib.request.urlopen(f"{url}/health/live", timeout=1) as answer:  # noqa: S310
            return bool(answer.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def api_process(
    database_url: str, redis_url: str, folder: Path, **extra: str
) -> Iterator[tuple[str, ChildProcess]]:
    """`discograph api` as its own process on a free port (test JWT secret, no rate limits
    unless `extra` sets them)."""
    port = free_port()
    env = cli_env(LOG_LEVEL="WARNING")
    env.update(api_env(database_url, REDIS_URL=redis_url, HTTP_PORT=str(port), **extra))
    process = CliProcess(f"api-{port}", "api", env, folder)
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_until(lambda: answers(url), 30, "answering /health/live")
        yield url, process
    finally:
        process.stop()
