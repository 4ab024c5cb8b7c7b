"""HTTP routes of FHIR Bulk Data export (Bulk Data Access IG v2,
https://hl7.org/fhir/uv/bulkdata/export.html).

Registered on FastAPI by :func:`install_bulk_routes` (every other ``/fhir``
path goes to :class:`~salus.fhir.asgi.FhirApp`):

* ``GET /fhir/$export``, ``GET /fhir/Patient/$export``,
  ``GET /fhir/Group/{id}/$export``: IG §"Bulk Data Kick-off Request";
  ``Prefer: respond-async`` is required, ``_type``, ``_since`` and
  ``_outputFormat`` (NDJSON only) are understood; other parameters are
  refused unless ``Prefer: handling=lenient``. Answers 202 Accepted with
  ``Content-Location`` (the status URL).
* ``GET /fhir/$export-status/{id}``: IG §"Bulk Data Status Request": 202 with
  ``X-Progress`` while running, 200 with the manifest (``application/json``)
  when complete, 500 with an OperationOutcome when failed.
  ``DELETE``: IG §"Bulk Data Delete Request" (202; later requests get 404).
* ``GET /fhir/$export-file/{id}/{n}``: IG §"Bulk Data Output File Request",
  NDJSON streamed from the blob store (``requiresAccessToken`` is true).

Only the principal that started an export, or a SYSTEM principal, sees its
status and files; others get 404. Every kick-off, status read, cancellation
and file download is audited (category ``export``), failures included;
refusals (401/403) are audited by the error handler as everywhere.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from salus.audit.events import AuditEvent
from salus.errors import (
    Forbidden,
    InvalidInput,
    MethodNotAllowed,
    NotAcceptable,
    NotAuthenticated,
    NotFound,
    SalusError,
)
from salus.fhir.bulk import (
    ACTIVE,
    NDJSON,
    BulkExporter,
    Export,
    ExportLevel,
    ExportRequest,
    ExportState,
    OutputFile,
)
from salus.fhir.search.resource_types import is_resource_type
from salus.fhir.store import check_id
from salus.logging import request_id_var
from salus.security.principal import Principal
from salus.server.security import current_principal, requested_purpose, services_of
from salus.services import Services

__all__ = ["install_bulk_routes", "manifest", "parse_export_request"]

FHIR_JSON = "application/fhir+json"
_OUTPUT_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
_ACCEPTED = frozenset(
    {"application/fhir+json", "application/json", "application/json+fhir", "*/*", "application/*"}
)
#: IG §"Query Parameters" that this server does not offer (refused unless lenient).
_UNSUPPORTED = ("_elements", "patient", "includeAssociatedData", "_typeFilter")
_SAFE_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
#: How long a client should wait before polling again (IG: ``Retry-After``).
RETRY_AFTER_SECONDS = 2


def _preferences(request: Request) -> set[str]:
    raw = request.headers.get("prefer", "")
    return {part.strip().lower() for item in raw.split(",") for part in item.split(";")}


def _since(value: str) -> datetime:
    try:
        since = datetime.fromisoformat(value.strip().replace(" ", "+").replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput("_since must be an instant.", expression=["_since"]) from None
    if since.tzinfo is None:
        raise InvalidInput("_since must include a time zone.", expression=["_since"])
    return since


def parse_export_request(
    level: ExportLevel,
    query: list[tuple[str, str]],
    *,
    group_id: str | None = None,
    lenient: bool = False,
) -> ExportRequest:
    """The kick-off's parameters (IG §"Query Parameters"), checked."""
    types: list[str] | None = None
    since: datetime | None = None
    for name, value in query:
        if name == "_type":
            for res_type in (t.strip() for t in value.split(",")):
                if not res_type:
                    continue
                if not is_resource_type(res_type):
                    raise InvalidInput("_type names an unknown resource type.", expression=[name])
                types = types or []
                if res_type not in types:
                    types.append(res_type)
        elif name == "_since":
            since = _since(value)
        elif name == "_outputFormat":
            # A '+' sent unencoded in a query string arrives as a space.
            if value.strip().replace(" ", "+") not in _OUTPUT_FORMATS:
                raise InvalidInput(
                    "Only application/fhir+ndjson output is supported.", expression=[name]
                )
        elif lenient:
            continue
        elif name in _UNSUPPORTED:
            raise InvalidInput(f"The {name} parameter is not supported here.", expression=[name])
        else:
            raise InvalidInput("The request has a parameter that $export does not support.")
    return ExportRequest(level, tuple(types) if types is not None else None, since, group_id)


def manifest(export: Export, fhir_base: str) -> dict[str, Any]:
    """The Complete Status body (IG §"Response - Complete Status")."""
    return {
        "transactionTime": (export.manifest or {}).get("transactionTime"),
        "request": export.request_url,
        "requiresAccessToken": True,
        "output": [
            {
                "type": item.type,
                "url": f"{fhir_base}/$export-file/{export.id}/{index}",
                "count": item.count,
            }
            for index, item in enumerate(export.files())
        ],
        "error": [],
    }


def _information(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational", "diagnostics": text}],
    }


def _safe(value: str) -> str:
    """An id for the audit trail: as given when well-formed, else a placeholder."""
    return value if _SAFE_ID.match(value) else "(invalid)"


async def _audit(
    services: Services,
    principal: Principal,
    action: str,
    entity: str,
    description: str,
    *,
    export: Export | None = None,
    purpose: str | None = None,
    error: SalusError | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    if isinstance(error, NotAuthenticated | Forbidden):
        return  # audited as a refusal by the error handler
    values: dict[str, Any] = dict(detail or {})
    flags = None
    if export is not None:
        values.update(export=export.id, status=export.status.value, level=export.level.value)
        purpose = purpose or export.params.get("purpose")
        flags = "deidentified" if export.params.get("deidentify") else None
    if error is not None:
        values["error"] = error.code
    await services.audit.record_async(
        AuditEvent.for_principal(
            principal,
            category="export",
            action=action,
            outcome=4 if error is not None else 0,
            entity=entity,
            purpose=purpose,
            description=description if error is None else f"{description} (failed)",
            flags=flags,
            detail=values,
        )
    )


async def _audited(
    services: Services,
    principal: Principal,
    action: str,
    entity: str,
    description: str,
    work: Callable[[], Export],
    purpose: str | None = None,
) -> Export:
    """Run ``work`` in a thread and audit it, success or failure."""
    try:
        export = await asyncio.to_thread(work)
    except SalusError as exc:
        await _audit(services, principal, action, entity, description, purpose=purpose, error=exc)
        raise
    await _audit(services, principal, action, entity, description, export=export)
    return export


def _kick_off(level: ExportLevel) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        principal = await current_principal(request)
        if request.method != "GET":
            raise MethodNotAllowed("Start a bulk export with GET.")
        services = services_of(request)
        purpose = requested_purpose(request)
        group_id = request.path_params.get("id")
        path = {
            ExportLevel.SYSTEM: "$export",
            ExportLevel.PATIENT: "Patient/$export",
            ExportLevel.GROUP: f"Group/{_safe(group_id or '')}/$export",
        }[level]
        base = f"{services.settings.base_url()}/fhir"

        def work() -> Export:
            accept = request.headers.get("accept")
            types = {t.split(";")[0].strip().lower() for t in (accept or "*/*").split(",")}
            if not types & _ACCEPTED:
                raise NotAcceptable("Kick-off responses are application/fhir+json.")
            prefer = _preferences(request)
            if "respond-async" not in prefer:
                raise InvalidInput(
                    "A bulk export needs the header 'Prefer: respond-async'.",
                    expression=["Prefer"],
                )
            if group_id is not None:
                check_id(group_id)
            export_request = parse_export_request(
                level,
                list(request.query_params.multi_items()),
                group_id=group_id,
                lenient="handling=lenient" in prefer,
            )
            query = request.url.query
            url = f"{base}/{path}" + (f"?{query}" if query else "")
            return BulkExporter(services).kick_off(principal, purpose, export_request, url)

        export = await _audited(
            services,
            principal,
            "E",
            path,
            "bulk export kick-off",
            work,
            purpose.value if purpose else None,
        )
        return JSONResponse(
            _information("The export was accepted; poll the Content-Location URL."),
            status_code=202,
            headers={"Content-Location": f"{base}/$export-status/{export.id}"},
            media_type=FHIR_JSON,
        )

    return endpoint


async def _status(request: Request) -> Response:
    principal = await current_principal(request)
    services = services_of(request)
    export_id = str(request.path_params["id"])
    exporter = BulkExporter(services)
    entity = f"$export-status/{_safe(export_id)}"
    if request.method == "DELETE":
        await _audited(
            services,
            principal,
            "D",
            entity,
            "bulk export cancelled",
            lambda: exporter.cancel(principal, export_id),
        )
        return JSONResponse(
            _information("The export was cancelled."), status_code=202, media_type=FHIR_JSON
        )
    export = await _audited(
        services,
        principal,
        "R",
        entity,
        "bulk export status",
        lambda: exporter.owned(principal, export_id),
    )
    if export.status.value in ACTIVE:
        headers = {
            "X-Progress": (export.progress or export.status.value)[:200],
            "Retry-After": str(RETRY_AFTER_SECONDS),
        }
        return Response(status_code=202, headers=headers)
    if export.status is ExportState.COMPLETED:
        base = f"{services.settings.base_url()}/fhir"
        return JSONResponse(manifest(export, base), media_type="application/json")
    failure = SalusError(f"The export failed: {export.error or 'unknown error'}")
    return JSONResponse(
        failure.to_operation_outcome(request_id_var.get()),
        status_code=failure.http_status,
        media_type=FHIR_JSON,
    )


async def _file(request: Request) -> Response:
    principal = await current_principal(request)
    services = services_of(request)
    export_id = str(request.path_params["id"])
    raw_index = str(request.path_params["n"])
    entity = f"$export-file/{_safe(export_id)}/{_safe(raw_index)}"
    exporter = BulkExporter(services)

    def work() -> tuple[Export, OutputFile, Iterator[bytes | bytearray]]:
        if not raw_index.isdigit() or len(raw_index) > 9:
            raise NotFound("No such export file.")
        export, output = exporter.file(principal, export_id, int(raw_index))
        return export, output, services.blobs.stream(output.digest)

    description = "bulk export file"
    try:
        export, output, chunks = await asyncio.to_thread(work)
    except SalusError as exc:
        await _audit(services, principal, "R", entity, description, error=exc)
        raise
    detail = {"type": output.type, "count": output.count}
    await _audit(services, principal, "R", entity, description, export=export, detail=detail)
    return StreamingResponse(
        (memoryview(chunk) for chunk in chunks),
        media_type=NDJSON,
        headers={"Content-Length": str(output.size), "Cache-Control": "no-store"},
    )


def install_bulk_routes(api: FastAPI) -> None:
    """Add the Bulk Data routes; register them before ``/fhir/{path:path}``."""
    for path, level in (
        ("/fhir/$export", ExportLevel.SYSTEM),
        ("/fhir/Patient/$export", ExportLevel.PATIENT),
        ("/fhir/Group/{id}/$export", ExportLevel.GROUP),
    ):
        api.add_route(path, _kick_off(level), methods=["GET", "POST"], include_in_schema=False)
    api.add_route(
        "/fhir/$export-status/{id}", _status, methods=["GET", "DELETE"], include_in_schema=False
    )
    api.add_route("/fhir/$export-file/{id}/{n}", _file, methods=["GET"], include_in_schema=False)
