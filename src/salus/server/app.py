"""The ASGI application of ``salus serve``.

Routes for FHIR, DICOMweb and the console are mounted by later modules; this
module owns the process-wide parts: lifespan (services, job workers and
non-HTTP listeners), the request-context middleware, the one error shape,
and the system endpoints (``/health``, ``/ready``, ``/metrics``, ``/api``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.middleware.gzip import GZipMiddleware

from salus import __version__, console, dicom, hl7, warehouse
from salus.config import Settings
from salus.fhir.asgi import FhirApp
from salus.fhir.bulk_routes import install_bulk_routes
from salus.fhir.import_routes import install_import_routes
from salus.jobs import Worker
from salus.metrics import Metrics
from salus.server.admin_routes import install_admin_routes
from salus.server.audit_routes import install_audit_routes
from salus.server.auth_routes import install_auth_routes
from salus.server.errors import install_error_handlers
from salus.server.middleware import RequestContextMiddleware
from salus.server.system import install_system_routes
from salus.services import Services

__all__ = ["SalusApp", "create_app"]

log = logging.getLogger("salus.server")


class SalusApp:
    """The outermost ASGI callable: request context around the FastAPI app."""

    def __init__(self, api: FastAPI, metrics: Metrics, settings: Settings) -> None:
        self.api = api
        self.metrics = metrics
        self.fhir = FhirApp(api)
        self._asgi = RequestContextMiddleware(
            self._dispatch,
            metrics=metrics if settings.metrics_enabled else None,
            max_body_bytes=settings.http_max_body_bytes,
            hsts=settings.base_url().startswith("https://"),
        )

    @property
    def services(self) -> Services:
        services: Services = self.api.state.services
        return services

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._asgi(scope, receive, send)

    async def _dispatch(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.fhir.handles(scope):
            await self.fhir(scope, receive, send)
        else:
            await self.api(scope, receive, send)


async def _analyze_periodically(services: Services, interval: float, stop: asyncio.Event) -> None:
    """Keep SQLite's planner statistics current: once at start, then every
    ``interval`` seconds (see :meth:`Database.analyze`)."""
    while not stop.is_set():
        try:
            await asyncio.to_thread(services.db.analyze)
        except Exception:  # a busy or failing database: the next round tries again
            log.warning("planner statistics were not refreshed", exc_info=True)
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass


def _every_process(listeners: list[Any]) -> list[Any]:
    """The listeners that run in every server process, not only the primary (the
    DIMSE listener on a socket the supervisor shares: ``SALUS_DICOM_PROCESSES``)."""
    return [listener for listener in listeners if getattr(listener, "every_process", False)]


def create_app(
    settings: Settings, services: Services | None = None, *, primary: bool = True
) -> SalusApp:
    """Build the application. With ``services`` given, the caller owns them
    (tests); otherwise they are built at start-up and closed at shutdown.
    Only a ``primary`` process runs the protocol listeners, the job workers and
    the audit checkpoints (see :mod:`salus.server.workers`)."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        owned = services is None
        svc = (
            services if services is not None else await asyncio.to_thread(Services.build, settings)
        )
        api.state.services = svc
        metrics.watch_jobs(svc.jobs.counts)
        stop = asyncio.Event()
        workers: list[asyncio.Task[None]] = []
        started: list[Any] = []
        await asyncio.to_thread(svc.signing_keys.ensure_active)
        await svc.audit.start(
            checkpoint_interval=settings.audit_checkpoint_seconds if primary else None
        )
        try:
            for listener in svc.listeners if primary else _every_process(svc.listeners):
                await listener.start()
                started.append(listener)
                log.info("listener started", extra={"listener": listener.name})
            if settings.jobs_enabled and primary:
                for index in range(settings.effective_job_workers()):
                    worker = Worker(
                        svc.jobs, svc.job_handlers, poll_interval=settings.jobs_poll_interval
                    )
                    workers.append(asyncio.create_task(worker.run(stop), name=f"worker-{index}"))
            if settings.database_sqlite_checkpoint_seconds > 0:  # SQLite WAL (ADR 23)
                await asyncio.to_thread(
                    svc.db.start_checkpointer, settings.database_sqlite_checkpoint_seconds
                )
            if primary and svc.db.is_sqlite and settings.database_analyze_seconds > 0:
                workers.append(
                    asyncio.create_task(
                        _analyze_periodically(svc, settings.database_analyze_seconds, stop),
                        name="analyze",
                    )
                )
            log.info("salus ready", extra={"version": __version__, "workers": len(workers)})
            yield
        finally:
            stop.set()
            if workers:
                await asyncio.gather(*workers, return_exceptions=True)
            for listener in reversed(started):
                try:
                    await listener.stop()
                except Exception:
                    log.exception("listener failed to stop", extra={"listener": listener.name})
            await svc.audit.stop()
            await asyncio.to_thread(svc.db.stop_checkpointer)
            await svc.db.aclose()  # the async read connections of this loop
            if owned:
                svc.close()
            log.info("salus stopped")

    api = FastAPI(
        title="Salus",
        version=__version__,
        summary="Health data hub: system and administration API (FHIR lives under /fhir).",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    if services is not None:
        api.state.services = services
    # Compress larger responses for clients that accept it (search Bundles, exports).
    api.add_middleware(GZipMiddleware, minimum_size=500)
    install_error_handlers(api)
    install_system_routes(api, settings, metrics)
    install_auth_routes(api)
    install_admin_routes(api)
    install_audit_routes(api)
    dicom.install_routes(api)
    hl7.install_routes(api)
    warehouse.install_routes(api)  # /fhir/ViewDefinition: before FhirApp takes /fhir
    install_bulk_routes(api)  # the rest of /fhir is FhirApp (SalusApp dispatches to it)
    install_import_routes(api)
    console.install_routes(api)  # last: the console's pages at / and /static/console
    return SalusApp(api, metrics, settings)
