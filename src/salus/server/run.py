"""Run the ASGI app under uvicorn with Salus's logging and shutdown settings."""

from __future__ import annotations

import uvicorn

from salus.config import Settings
from salus.server.app import create_app

__all__ = ["run_server"]


def run_server(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests get ``shutdown_timeout``."""
    config = uvicorn.Config(
        create_app(settings),
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
    uvicorn.Server(config).run()
