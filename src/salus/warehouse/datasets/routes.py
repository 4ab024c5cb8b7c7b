"""``/api/v1/datasets``: schemas, templates and submissions over HTTP.

* ``GET /api/v1/datasets``: every schema (JSON, :meth:`DatasetSchema.describe`);
* ``GET /api/v1/datasets/{name}``: one schema;
* ``GET /api/v1/datasets/{name}/template.csv``: the CSV template (header line);
* ``GET /api/v1/datasets/{name}/schema.json``: a JSON Schema of a JSON submission;
* ``POST /api/v1/datasets/{name}/submissions``: a submission, ``text/csv`` or
  ``application/json`` (sniffed when neither); optional ``?period=YYYY-MM``
  that every row must carry. 201 with the summary, 422 with the report
  (``{"dataset", "status": "rejected", "errors", "truncated", "issues": [{"row",
  "column", "code", "message"}]}``), 403 for another organization's rows;
* ``GET /api/v1/datasets/{name}/submissions`` and ``GET
  /api/v1/datasets/submissions``: accepted submissions (counts only), own
  organization's, every organization's for the health authority.

Schemas and templates are readable by any authenticated principal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from salus.audit.events import AuditEvent
from salus.errors import PayloadTooLarge
from salus.server.security import current_principal, services_of
from salus.warehouse.datasets.definitions import SCHEMAS, schema_named
from salus.warehouse.datasets.service import Datasets, SubmissionRejected

__all__ = ["install_dataset_routes"]


async def _list(request: Request) -> Response:
    await current_principal(request)
    return JSONResponse({"datasets": [s.describe() for s in SCHEMAS.values()]})


async def _one(request: Request) -> Response:
    await current_principal(request)
    return JSONResponse(schema_named(str(request.path_params["name"])).describe())


async def _template(request: Request) -> Response:
    await current_principal(request)
    schema = schema_named(str(request.path_params["name"]))
    return Response(
        schema.template_csv(),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{schema.name}-{schema.version}.csv"'
        },
    )


async def _json_schema(request: Request) -> Response:
    await current_principal(request)
    services = services_of(request)
    schema = schema_named(str(request.path_params["name"]))
    return JSONResponse(
        schema.json_schema(services.settings.base_url()), media_type="application/schema+json"
    )


def _media(content_type: str) -> str:
    main = content_type.split(";")[0].strip().lower()
    if main in ("text/csv", "application/csv"):
        return "csv"
    if main in ("application/json", "application/fhir+json"):
        return "json"
    return "auto"


async def _submit(request: Request) -> Response:
    principal = await current_principal(request)
    services = services_of(request)
    name = str(request.path_params["name"])
    schema_named(name)
    datasets = Datasets(services)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > datasets.max_bytes:
        raise PayloadTooLarge(f"A submission is at most {datasets.max_bytes} bytes.")
    data = await request.body()
    period = request.query_params.get("period")
    media = _media(request.headers.get("content-type", ""))
    try:
        summary = await asyncio.to_thread(
            datasets.submit, principal, name, data, media=media, period=period
        )
    except SubmissionRejected as exc:
        return JSONResponse(exc.body(), status_code=422)
    return JSONResponse(summary.to_json(), status_code=201)


async def _history(request: Request) -> Response:
    principal = await current_principal(request)
    services = services_of(request)
    name = request.path_params.get("name")
    found = await asyncio.to_thread(
        Datasets(services).history, principal, str(name) if name else None
    )
    await services.audit.record_async(
        AuditEvent.for_principal(
            principal,
            category="rest",
            action="R",
            entity=f"dataset/{name or '*'}/submissions",
            description="dataset submissions read",
            detail={"count": len(found)},
        )
    )
    return JSONResponse({"submissions": [s.to_json() for s in found]})


Endpoint = Callable[[Request], Awaitable[Response]]


def install_dataset_routes(api: FastAPI) -> None:
    """Add the routes (fixed paths before ``{name}``)."""
    routes: list[tuple[str, Endpoint, list[str]]] = [
        ("/api/v1/datasets", _list, ["GET"]),
        ("/api/v1/datasets/submissions", _history, ["GET"]),
        ("/api/v1/datasets/{name}", _one, ["GET"]),
        ("/api/v1/datasets/{name}/template.csv", _template, ["GET"]),
        ("/api/v1/datasets/{name}/schema.json", _json_schema, ["GET"]),
        ("/api/v1/datasets/{name}/submissions", _submit, ["POST"]),
        ("/api/v1/datasets/{name}/submissions", _history, ["GET"]),
    ]
    for path, endpoint, methods in routes:
        api.add_route(path, endpoint, methods=methods, include_in_schema=False)
