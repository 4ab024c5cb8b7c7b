"""System endpoints: liveness, readiness, metrics, version and API docs."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from salus import __version__
from salus.config import Settings
from salus.errors import NotFound, Unavailable
from salus.logging import request_id_var
from salus.metrics import Metrics
from salus.services import Services

__all__ = ["install_system_routes"]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


class Version(BaseModel):
    name: str
    version: str


def _swagger_assets() -> Path | None:
    try:
        import swagger_ui_bundle
    except ImportError:  # pragma: no cover - a pinned dependency
        return None
    return Path(swagger_ui_bundle.swagger_ui_path)


def install_system_routes(api: FastAPI, settings: Settings, metrics: Metrics) -> None:
    @api.get("/health", response_model=Health, tags=["system"])
    async def health() -> Health:
        """Liveness: the process answers. Checks no dependency."""
        return Health(status="ok")

    @api.get(
        "/ready",
        response_model=Readiness,
        tags=["system"],
        responses={503: {"description": "A dependency is not ready (OperationOutcome)"}},
    )
    async def ready(request: Request) -> Response:
        """Readiness: database, schema, blob store and keys are usable."""
        services: Services = request.app.state.services
        checks = await asyncio.to_thread(services.readiness)
        if all(value == "ok" for value in checks.values()):
            return JSONResponse(Readiness(status="ready", checks=checks).model_dump())
        failed = Unavailable(
            "Not ready: "
            + "; ".join(f"{name}: {value}" for name, value in checks.items() if value != "ok")
        )
        outcome = failed.to_operation_outcome(request_id_var.get())
        outcome["issue"] = [
            {
                "severity": "error",
                "code": "transient",
                "details": {
                    "coding": [{"system": "urn:salus:error", "code": "unavailable"}],
                    "text": f"{name}: {value}",
                },
                "diagnostics": f"{name}: {value}",
                "expression": [name],
            }
            for name, value in checks.items()
            if value != "ok"
        ]
        return JSONResponse(outcome, status_code=503)

    @api.get("/metrics", tags=["system"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition."""
        if not settings.metrics_enabled:
            raise NotFound()
        data = await asyncio.to_thread(metrics.render)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    @api.get("/api/v1/version", response_model=Version, tags=["system"])
    async def version() -> Version:
        return Version(name="salus", version=__version__)

    assets = _swagger_assets()
    if assets is not None:
        api.mount("/api/docs/static", StaticFiles(directory=assets), name="swagger-static")

    @api.get("/api/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        """Swagger UI, served from the package (no external CDN)."""
        return get_swagger_ui_html(
            openapi_url="/api/openapi.json",
            title="Salus API",
            swagger_js_url="/api/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/api/docs/static/swagger-ui.css",
            swagger_favicon_url="/api/docs/static/favicon-32x32.png",
        )
