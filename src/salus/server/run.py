"""Run the ASGI app under uvicorn with Salus's logging and shutdown settings."""

from __future__ import annotations

import gc
import socket
from collections.abc import Callable

import uvicorn

from salus.config import Settings
from salus.errors import ConfigurationError
from salus.server.app import create_app

__all__ = ["freeze_startup_objects", "run_server", "serve_app"]


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


class _Server(uvicorn.Server):
    """uvicorn's server, calling ``on_started`` once the app's lifespan has started
    and its sockets serve (a failed start exits before it)."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            freeze_startup_objects()
        if self.started and self._on_started is not None:
            self._on_started()


def freeze_startup_objects() -> None:
    """Leave what start-up made out of the cyclic garbage collector's work.

    The app, its services, the FHIR definitions and search registry live as
    long as the process; every full collection walked them all again, and a
    write-heavy request (a transaction Bundle makes some 10^5 objects per
    100 resources) triggers many collections: ~10 % of the CPU of a Bundle.
    ``gc.freeze`` (after one collection, so no garbage is kept) moves them
    to the permanent generation; later objects are collected as before."""
    gc.collect()
    gc.freeze()


def serve_app(
    settings: Settings,
    *,
    primary: bool,
    sockets: list[socket.socket] | None = None,
    on_started: Callable[[], None] | None = None,
) -> None:
    """One server process: the app under uvicorn, on ``sockets`` when given;
    ``on_started`` is called when it serves (the supervisor's readiness signal)."""
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
    _Server(config, on_started).run(sockets=sockets)
