"""HTTP routes of the warehouse (SQL-on-FHIR v2 §"Operations", and Salus's SQL API).

On FastAPI, registered before the FHIR app takes ``/fhir`` (``FhirApp.handles``
leaves ``/fhir/ViewDefinition...`` and ``$viewdefinition-*`` here):

* ``/fhir/ViewDefinition`` (GET: a searchset Bundle, POST: create),
  ``/fhir/ViewDefinition/{id}`` (GET, PUT, DELETE): stored definitions
  (:mod:`.catalog`);
* ``POST /fhir/ViewDefinition/$run`` (and ``/fhir/$viewdefinition-run``):
  ``viewResource`` or ``viewReference``; ``GET|POST
  /fhir/ViewDefinition/{id}/$run``: a stored one. A Parameters body
  (``_format``, ``header``, ``_limit``, ``patient``, ``group``, ``_since``,
  ``resource``), query parameters, or a bare ViewDefinition as the body;
* ``POST /fhir/ViewDefinition/$export`` (and ``/fhir/$viewdefinition-export``):
  ``Prefer: respond-async``, ``view`` parts (``name``, ``viewResource`` or
  ``viewReference``), ``_format`` (ndjson, csv, json, parquet), ``_since``;
  202 with ``Content-Location``: ``.../ViewDefinition/$export-status/{id}``
  (202 + ``X-Progress``, then 200 with a Parameters listing each output's
  ``name`` and ``location``; DELETE cancels), files at
  ``.../ViewDefinition/$export-file/{id}/{n}``;
* ``POST /api/v1/warehouse/query`` (``{"sql": ...}``) and
  ``POST /api/v1/warehouse/views/{key}/$materialize``: SQL over the
  materialized views and refreshes (:mod:`.service`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from salus.audit.events import AuditEvent
from salus.errors import InvalidInput, NotFound, SalusError
from salus.fhir.store import check_id
from salus.security.principal import Principal, Purpose
from salus.server.security import current_principal, requested_purpose, services_of
from salus.warehouse.catalog import compile_definition
from salus.warehouse.export import ViewExporter
from salus.warehouse.run import RunRequest, media_format, render, run_view

if TYPE_CHECKING:
    from salus.services import Services
    from salus.warehouse.service import Warehouse

__all__ = ["install_warehouse_routes"]

FHIR_JSON = "application/fhir+json"


def _warehouse(services: Services) -> Warehouse:
    if services.warehouse is None:
        raise NotFound("The warehouse is not installed.")
    return services.warehouse


async def _json_body(request: Request) -> dict[str, Any] | None:
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        body = json.loads(raw)
    except ValueError:
        raise InvalidInput("The body is not JSON.") from None
    if not isinstance(body, dict):
        raise InvalidInput("The body must be a JSON object.")
    return body


def _parameters(body: dict[str, Any] | None) -> list[dict[str, Any]]:
    if body is None or body.get("resourceType") != "Parameters":
        return []
    params = body.get("parameter") or []
    if not isinstance(params, list):
        raise InvalidInput("Parameters.parameter must be a list.")
    return [p for p in params if isinstance(p, dict)]


def _scalar(param: dict[str, Any]) -> Any:
    for key, value in param.items():
        if key.startswith("value"):
            if isinstance(value, dict) and "reference" in value:
                return value["reference"]
            return value
    return None


def _reference_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{what} must be a reference or an id.", expression=[what])
    return check_id(value.split("/_history/")[0].split("/")[-1])


def _instant(value: Any) -> datetime:
    try:
        found = datetime.fromisoformat(str(value).strip().replace(" ", "+").replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput("_since must be an instant.", expression=["_since"]) from None
    if found.tzinfo is None:
        raise InvalidInput("_since must include a time zone.", expression=["_since"])
    return found


def _stored_definition(services: Services, reference: str) -> dict[str, Any]:
    view_id = _reference_id(reference, "viewReference")
    return _warehouse(services).catalog.get(view_id).resource()


def _run_inputs(
    services: Services, request: Request, body: dict[str, Any] | None, view_id: str | None
) -> tuple[RunRequest, str, bool]:
    """(what to run, output format, csv header) from the path, query and body."""
    values: dict[str, list[Any]] = {}
    for name, text in request.query_params.multi_items():
        values.setdefault(name, []).append(text)
    params = _parameters(body)
    for param in params:
        key = str(param.get("name"))
        value = param.get("resource") if key in ("viewResource", "resource") else _scalar(param)
        values.setdefault(key, []).append(value)
    definition: Any = None
    if view_id is not None:
        definition = _warehouse(services).catalog.get(check_id(view_id)).resource()
    elif values.get("viewResource"):
        definition = values["viewResource"][0]
    elif values.get("viewReference"):
        definition = _stored_definition(services, str(values["viewReference"][0]))
    elif body is not None and not params:
        definition = body  # a bare ViewDefinition
    if definition is None:
        raise InvalidInput("Give viewResource or viewReference.", expression=["viewResource"])
    view = compile_definition(definition)
    fmt = media_format(str(values["_format"][0]) if values.get("_format") else None)[0]
    header = str(values.get("header", ["true"])[0]).lower() != "false"
    limit = None
    if values.get("_limit"):
        raw = str(values["_limit"][0])
        if not raw.isdigit() or int(raw) < 1:
            raise InvalidInput("_limit must be a positive integer.", expression=["_limit"])
        limit = int(raw)
    patients = tuple(_reference_id(p, "patient") for p in values.get("patient", [])) or None
    groups = values.get("group", [])
    group = _reference_id(groups[0], "group") if groups else None
    since = _instant(values["_since"][0]) if values.get("_since") else None
    inline = values.get("resource")
    resources = tuple(r for r in inline if isinstance(r, dict)) if inline else None
    return RunRequest(view, limit, patients, group, since, resources), fmt, header


async def _audit(
    services: Services,
    principal: Principal,
    entity: str,
    description: str,
    purpose: Purpose | None,
    detail: dict[str, Any],
    *,
    deidentified: bool = False,
) -> None:
    await services.audit.record_async(
        AuditEvent.for_principal(
            principal,
            category="rest",
            action="E",
            entity=entity,
            purpose=purpose,
            description=description,
            flags="deidentified" if deidentified else None,
            detail=detail,
        )
    )


async def _run(request: Request) -> Response:
    principal = await current_principal(request)
    services = services_of(request)
    purpose = requested_purpose(request)
    body = await _json_body(request) if request.method == "POST" else None
    view_id = request.path_params.get("id")

    def work() -> tuple[bytes, str, dict[str, Any], bool, Purpose | None]:
        run, fmt, header = _run_inputs(services, request, body, view_id)
        result = run_view(services, principal, purpose, run)
        data = render(run.view, result.columns, result.rows, fmt, header=header)
        detail = {"resourceType": run.view.resource, "rows": len(result.rows)}
        return data, fmt, detail, result.deidentified, result.purpose

    data, fmt, detail, deidentified, used = await asyncio.to_thread(work)
    await _audit(
        services, principal, "ViewDefinition/$run", "view run", used, detail,
        deidentified=deidentified,
    )  # fmt: skip
    media = media_format(fmt)[1]
    return Response(data, media_type=media, headers={"Cache-Control": "no-store"})


async def _definitions(request: Request) -> Response:
    principal = await current_principal(request)
    services = services_of(request)
    warehouse = _warehouse(services)
    view_id = request.path_params.get("id")
    base = f"{services.settings.base_url()}/fhir"
    method = request.method
    if method == "GET" and view_id is None:
        stored = await asyncio.to_thread(warehouse.catalog.list)
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(stored),
            "entry": [
                {"fullUrl": f"{base}/ViewDefinition/{v.id}", "resource": v.resource()}
                for v in stored
            ],
        }
        return JSONResponse(bundle, media_type=FHIR_JSON)
    if method == "GET":
        found = await asyncio.to_thread(warehouse.catalog.get, check_id(str(view_id)))
        return JSONResponse(found.resource(), media_type=FHIR_JSON)
    warehouse.require(principal)
    if method == "DELETE":
        gone = await asyncio.to_thread(warehouse.catalog.delete, check_id(str(view_id)))
        await _audit(services, principal, f"ViewDefinition/{gone.id}", "view deleted", None, {})
        return Response(status_code=204)
    body = await _json_body(request)
    if body is None:
        raise InvalidInput("Send a ViewDefinition.")
    saved, created = await asyncio.to_thread(warehouse.catalog.save, principal, body, view_id)
    await _audit(services, principal, f"ViewDefinition/{saved.id}", "view saved", None, {})
    headers = {"Location": f"{base}/ViewDefinition/{saved.id}", "ETag": f'W/"{saved.version}"'}
    return JSONResponse(
        saved.resource(), status_code=201 if created else 200, headers=headers, media_type=FHIR_JSON
    )


def _information(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational", "diagnostics": text}],
    }


async def _export(request: Request) -> Response:
    principal = await current_principal(request)
    services = services_of(request)
    purpose = requested_purpose(request)
    prefer = request.headers.get("prefer", "").lower()
    if "respond-async" not in prefer:
        raise InvalidInput(
            "$export needs the header 'Prefer: respond-async'.", expression=["Prefer"]
        )
    body = await _json_body(request)
    base = f"{services.settings.base_url()}/fhir"

    def work() -> str:
        views: list[tuple[str, dict[str, Any]]] = []
        fmt, header, since = "ndjson", True, None
        for param in _parameters(body):
            name = param.get("name")
            if name == "view":
                parts = {p.get("name"): p for p in param.get("part") or [] if isinstance(p, dict)}
                label = _scalar(parts["name"]) if "name" in parts else None
                if "viewResource" in parts:
                    definition = parts["viewResource"].get("resource")
                elif "viewReference" in parts:
                    definition = _stored_definition(services, str(_scalar(parts["viewReference"])))
                else:
                    raise InvalidInput("A view part needs viewResource or viewReference.")
                if not isinstance(definition, dict):
                    raise InvalidInput("viewResource must be a ViewDefinition.")
                views.append((str(label) if label else "", definition))
            elif name == "_format":
                fmt = media_format(str(_scalar(param)))[0]
            elif name == "header":
                header = _scalar(param) is not False
            elif name == "_since":
                since = _instant(_scalar(param))
        if not views:
            raise InvalidInput("Give at least one view.", expression=["view"])
        export = ViewExporter(services).kick_off(
            principal, purpose, views, fmt, header=header, since=since, request_url=str(request.url)
        )
        return export.id

    export_id = await asyncio.to_thread(work)
    await _audit(
        services,
        principal,
        "ViewDefinition/$export",
        "view export kick-off",
        purpose,
        {"export": export_id},
    )
    return JSONResponse(
        _information("The export was accepted; poll the Content-Location URL."),
        status_code=202,
        headers={"Content-Location": f"{base}/ViewDefinition/$export-status/{export_id}"},
        media_type=FHIR_JSON,
    )


async def _export_status(request: Request) -> Response:
    principal = await current_principal(request)
    services = services_of(request)
    exporter = ViewExporter(services)
    export_id = str(request.path_params["id"])
    if request.method == "DELETE":
        await asyncio.to_thread(exporter.cancel, principal, export_id)
        return JSONResponse(
            _information("The export was cancelled."), status_code=202, media_type=FHIR_JSON
        )
    export = await asyncio.to_thread(exporter.owned, principal, export_id)
    if export.status in ("accepted", "in-progress"):
        return Response(
            status_code=202,
            headers={"X-Progress": (export.progress or export.status)[:200], "Retry-After": "2"},
        )
    if export.status == "failed":
        failure = SalusError(f"The export failed: {export.error or 'unknown error'}")
        return JSONResponse(failure.to_operation_outcome(), status_code=500, media_type=FHIR_JSON)
    base = f"{services.settings.base_url()}/fhir"
    outputs = [
        {
            "name": "output",
            "part": [
                {"name": "name", "valueString": item["name"]},
                {
                    "name": "location",
                    "valueUri": f"{base}/ViewDefinition/$export-file/{export.id}/{n}",
                },
                {"name": "rows", "valueInteger": item["rows"]},
            ],
        }
        for n, item in enumerate(export.files())
    ]
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "exportId", "valueString": export.id},
            {"name": "status", "valueCode": "completed"},
            {"name": "_format", "valueCode": export.params["format"]},
            *outputs,
        ],
    }
    return JSONResponse(body, media_type=FHIR_JSON)


async def _export_file(request: Request) -> Response:
    principal = await current_principal(request)
    services = services_of(request)
    exporter = ViewExporter(services)
    raw = str(request.path_params["n"])

    def work() -> tuple[bytes, str, dict[str, Any]]:
        export = exporter.owned(principal, str(request.path_params["id"]))
        files = export.files()
        if export.status != "completed" or not raw.isdigit() or not 0 <= int(raw) < len(files):
            raise NotFound("No such export file.")
        item = files[int(raw)]
        return bytes(services.blobs.get(item["digest"])), export.params["format"], item

    data, fmt, item = await asyncio.to_thread(work)
    await _audit(
        services,
        principal,
        "ViewDefinition/$export-file",
        "view export file",
        None,
        {"rows": item["rows"]},
    )
    return Response(data, media_type=media_format(fmt)[1], headers={"Cache-Control": "no-store"})


async def _query(request: Request) -> Response:
    principal = await current_principal(request)
    services = services_of(request)
    body = await _json_body(request)
    sql = (body or {}).get("sql")
    if not isinstance(sql, str):
        raise InvalidInput('Send {"sql": "..."}.', expression=["sql"])
    result = await asyncio.to_thread(_warehouse(services).query, principal, sql)
    return JSONResponse({"columns": result.columns, "rows": [list(r) for r in result.rows]})


async def _materialize(request: Request) -> Response:
    principal = await current_principal(request)
    services = services_of(request)
    full = request.query_params.get("full", "false").lower() == "true"
    key = str(request.path_params["key"])
    report = await asyncio.to_thread(_warehouse(services).materialize, principal, key, full=full)
    return JSONResponse(report.to_json())


Endpoint = Callable[[Request], Awaitable[Response]]


def install_warehouse_routes(api: FastAPI) -> None:
    """Add the routes (operations before ``/fhir/ViewDefinition/{id}``)."""
    routes: list[tuple[str, Endpoint, list[str]]] = [
        ("/fhir/ViewDefinition/$run", _run, ["POST"]),
        ("/fhir/ViewDefinition/$viewdefinition-run", _run, ["POST"]),
        ("/fhir/$viewdefinition-run", _run, ["POST"]),
        ("/fhir/ViewDefinition/$export", _export, ["POST"]),
        ("/fhir/ViewDefinition/$viewdefinition-export", _export, ["POST"]),
        ("/fhir/$viewdefinition-export", _export, ["POST"]),
        ("/fhir/ViewDefinition/$export-status/{id}", _export_status, ["GET", "DELETE"]),
        ("/fhir/ViewDefinition/$export-file/{id}/{n}", _export_file, ["GET"]),
        ("/fhir/ViewDefinition/{id}/$run", _run, ["GET", "POST"]),
        ("/fhir/ViewDefinition/{id}/$viewdefinition-run", _run, ["GET", "POST"]),
        ("/fhir/ViewDefinition", _definitions, ["GET", "POST"]),
        ("/fhir/ViewDefinition/{id}", _definitions, ["GET", "PUT", "DELETE"]),
        ("/api/v1/warehouse/query", _query, ["POST"]),
        ("/api/v1/warehouse/views/{key}/$materialize", _materialize, ["POST"]),
    ]
    for path, endpoint, methods in routes:
        api.add_route(path, endpoint, methods=methods, include_in_schema=False)
