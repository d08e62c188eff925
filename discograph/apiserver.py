"""`discograph api --workers N`: the API on N uvicorn worker processes sharing one socket.

One process serves one core. With N workers:
- each worker builds the app itself (`app_factory`, from the environment the supervisor
  prepared: its settings and the database URL, embedded or configured, and the read replica's
  `READ_DATABASE_URL` when set);
- Prometheus runs in multi-process mode (`PROMETHEUS_MULTIPROC_DIR`, a folder the supervisor
  creates and removes), so `/metrics` on any worker reports the sum of all of them;
- the shared listening socket is labelled IPPROTO_TCP, so accepted connections get TCP_NODELAY
  (uvicorn binds it with protocol 0 and asyncio then leaves Nagle on: ~40 ms per keep-alive
  request; uvicorn issue #3149);
- every worker dies with the supervisor (PR_SET_PDEATHSIG), even if it is SIGKILLed.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from typing import TYPE_CHECKING

from discograph.processes import die_with_parent
from discograph.settings import Settings, load_settings

if TYPE_CHECKING:
    from litestar import Litestar

ENV_FILE_VARIABLE = "DISCOGRAPH_ENV_FILE"  # the supervisor's `--env-file`, for the workers


def app_factory() -> Litestar:
    """uvicorn `--factory` entry point of each worker."""
    from api.app import create_app

    die_with_parent()
    settings = load_settings(env_file=os.environ.get(ENV_FILE_VARIABLE) or None)
    assert settings.database_url is not None  # the supervisor set it
    return create_app(settings, settings.database_url, read_database_url=settings.read_database_url)


def tcp_socket(sock: socket.socket) -> socket.socket:
    """The same listening socket, labelled IPPROTO_TCP (see the module doc)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
        return socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    return sock


def serve_workers(settings: Settings, database_url: str, workers: int, env_file: str) -> None:
    """Run the supervisor until SIGINT / SIGTERM (uvicorn's), then stop every worker."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    metrics_dir = tempfile.mkdtemp(prefix="discograph-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ["DATABASE_URL"] = database_url
    os.environ[ENV_FILE_VARIABLE] = env_file
    try:
        config = uvicorn.Config(
            "discograph.apiserver:app_factory",
            factory=True,
            host=settings.http_host,
            port=settings.http_port,
            workers=workers,
            ws_per_message_deflate=settings.ws_compression == "on",
            log_level=settings.log_level.lower(),
            access_log=False,
        )
        sock = tcp_socket(config.bind_socket())
        Multiprocess(config, sockets=[sock]).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
