"""Run the ASGI app under uvicorn with Salus's logging and shutdown settings."""

from __future__ import annotations

import socket

import uvicorn

from salus.config import Settings
from salus.errors import ConfigurationError
from salus.server.app import create_app

__all__ = ["run_server", "serve_app"]


def run_server(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM; in-flight requests get ``shutdown_timeout``.

    With more than one HTTP worker (``SALUS_HTTP_WORKERS``) a supervisor runs
    them (:mod:`salus.server.workers`); returns the exit status."""
    workers = settings.effective_http_workers()
    if workers == 1:
        serve_app(settings, primary=True)
        return 0
    from salus.server.workers import Supervisor

    try:
        return Supervisor(settings, workers).run()
    except OSError as exc:
        raise ConfigurationError(
            f"Cannot listen on {settings.http_host}:{settings.http_port} ({exc.strerror})."
        ) from None


def serve_app(
    settings: Settings, *, primary: bool, sockets: list[socket.socket] | None = None
) -> None:
    """One server process: the app under uvicorn, on ``sockets`` when given."""
    config = uvicorn.Config(
        create_app(settings, primary=primary),
        host=settings.http_host,
        port=settings.http_port,
        lifespan="on",
        log_config=None,  # keep Salus's handlers (configure_logging)
        access_log=False,  # Salus logs route templates, not URLs
        server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_timeout),
        ssl_certfile=str(settings.tls_certfile) if settings.tls_certfile else None,
        ssl_keyfile=str(settings.tls_keyfile) if settings.tls_keyfile else None,
    )
    uvicorn.Server(config).run(sockets=sockets)
