"""HTTP routes of FHIR Bulk Data import (FHIR R4 ``async.html`` request pattern,
as the Bulk Data Access IG v2 uses for ``$export``).

Registered on FastAPI by :func:`install_import_routes` (``FhirApp`` leaves
``$import`` paths to FastAPI):

* ``POST /fhir/$import`` with ``Prefer: respond-async``: the kick-off. The
  body is either the NDJSON itself (``Content-Type: application/fhir+ndjson``,
  optionally ``Content-Encoding: gzip``), streamed into the encrypted blob
  store and committed before the answer, or a ``Parameters`` resource
  (``application/fhir+json``) whose ``input`` entries (``type``, ``url``) name
  files uploaded before to ``$import-file`` (or files of the caller's own
  ``$export``). Answers 202 Accepted with ``Content-Location`` (the status URL).
* ``POST /fhir/$import-file``: upload one NDJSON file (same content types);
  201 Created with ``Location``, the URL to name as an input.
* ``GET /fhir/$import-status/{id}``: 202 with ``X-Progress`` while running;
  200 with the result (``application/json``) when complete: per input the
  counts created, updated and rejected, each rejected line (input, line,
  reason, FHIRPath of the element; never resource content) and the same as
  an OperationOutcome; 500 with an OperationOutcome when the import failed.
  ``DELETE``: cancel (202; later requests get 404; lines committed before
  the cancellation stay imported).

Only principals that may create resources import; each line is then decided
per type by the policy engine. Only the principal that started an import (or
a SYSTEM principal) sees it; others get 404. Kick-offs, uploads, status reads
and cancellations are audited, failures included.
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from salus.audit.events import AuditEvent
from salus.errors import (
    Forbidden,
    InvalidInput,
    NotAcceptable,
    NotAuthenticated,
    PayloadTooLarge,
    SalusError,
    UnsupportedMediaType,
)
from salus.fhir.bulkimport import (
    ACTIVE,
    NDJSON_TYPES,
    BulkImporter,
    Import,
    ImportInput,
    ImportState,
    UploadedFile,
    parse_import_parameters,
)
from salus.logging import request_id_var
from salus.security.principal import Principal
from salus.server.security import current_principal, requested_purpose, services_of
from salus.services import Services

__all__ = ["import_result", "install_import_routes"]

FHIR_JSON = "application/fhir+json"
_JSON_TYPES = frozenset({"application/fhir+json", "application/json", "application/json+fhir"})
_ACCEPTED = _JSON_TYPES | {"*/*", "application/*"}
_SAFE_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
#: Decompressed bytes handed to the blob store at a time.
_PIECE = 1024 * 1024
#: A Parameters kick-off body is small; this bounds it once decompressed.
_MAX_PARAMETERS_BYTES = 4 * 1024 * 1024
#: How long a client should wait before polling again.
RETRY_AFTER_SECONDS = 2

T = TypeVar("T")


def _preferences(request: Request) -> set[str]:
    raw = request.headers.get("prefer", "")
    return {part.strip().lower() for item in raw.split(",") for part in item.split(";")}


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _gzipped(request: Request) -> bool:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return False
    if encoding in ("gzip", "x-gzip"):
        return True
    raise UnsupportedMediaType("Content-Encoding must be gzip or identity.")


def _check_accept(request: Request) -> None:
    accept = request.headers.get("accept")
    types = {t.split(";")[0].strip().lower() for t in (accept or "*/*").split(",")}
    if not types & _ACCEPTED:
        raise NotAcceptable("Bulk import responses are application/fhir+json.")


def _safe(value: str) -> str:
    """An id for the audit trail: as given when well-formed, else a placeholder."""
    return value if _SAFE_ID.match(value) else "(invalid)"


def _information(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational", "diagnostics": text}],
    }


class _Gunzip:
    """Incremental gzip decoding (RFC 1952, members concatenated), bounded output."""

    def __init__(self) -> None:
        self._decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self._in_member = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            while data:
                self._in_member = True
                out = self._decoder.decompress(data, _PIECE)
                if out:
                    yield out
                data = self._decoder.unconsumed_tail
                if self._decoder.eof:
                    data = self._decoder.unused_data + data
                    self._decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                    self._in_member = False
        except zlib.error:
            raise InvalidInput("The body is not valid gzip.") from None

    def finish(self) -> None:
        if self._in_member:
            raise InvalidInput("The gzip body is truncated.")


async def _upload(
    request: Request, importer: BulkImporter, principal: Principal, request_url: str
) -> UploadedFile:
    """Stream the request body (gunzipped, bounded) into the encrypted blob store
    from a worker thread, and record it: committed before anything is answered."""
    gzipped = _gzipped(request)
    limit = importer.services.settings.fhir_import_max_bytes
    stream = request.stream().__aiter__()

    async def next_chunk() -> bytes | None:
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return None

    def chunks() -> Iterator[bytes]:
        decoder = _Gunzip() if gzipped else None
        total = 0
        while True:
            chunk = anyio.from_thread.run(next_chunk)
            if chunk is None:
                break
            for piece in decoder.feed(chunk) if decoder is not None else (chunk,):
                total += len(piece)
                if total > limit:
                    raise PayloadTooLarge(f"An import file may hold at most {limit} bytes.")
                yield piece
        if decoder is not None:
            decoder.finish()

    def store() -> UploadedFile:
        return importer.upload(principal, chunks(), request_url)

    return await anyio.to_thread.run_sync(store)


async def _parameters(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if _gzipped(request):
        try:
            decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            raw = decoder.decompress(raw, _MAX_PARAMETERS_BYTES + 1)
        except zlib.error:
            raise InvalidInput("The body is not valid gzip.") from None
    if len(raw) > _MAX_PARAMETERS_BYTES:
        raise PayloadTooLarge("The Parameters resource is too large.")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidInput("The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidInput("$import takes a Parameters resource.")
    return body


async def _audited(
    services: Services,
    principal: Principal,
    action: str,
    entity: str,
    description: str,
    work: Callable[[], T],
    detail: Callable[[T], dict[str, Any]] | None = None,
) -> T:
    """Run ``work`` in a thread and audit it, success or failure (refusals are
    audited by the error handler)."""
    try:
        value = await asyncio.to_thread(work)
    except SalusError as exc:
        if not isinstance(exc, NotAuthenticated | Forbidden):
            await _record(services, principal, action, entity, description, {"error": exc.code})
        raise
    await _record(services, principal, action, entity, description, detail(value) if detail else {})
    return value


async def _record(
    services: Services,
    principal: Principal,
    action: str,
    entity: str,
    description: str,
    detail: dict[str, Any],
) -> None:
    failed = "error" in detail
    await services.audit.record_async(
        AuditEvent.for_principal(
            principal,
            category="rest",
            action=action,
            outcome=4 if failed else 0,
            entity=entity,
            description=f"{description} (failed)" if failed else description,
            detail=detail,
        )
    )


async def _kick_off(request: Request) -> Response:
    """``POST [base]/$import`` (``Prefer: respond-async``)."""
    principal = await current_principal(request)
    services = services_of(request)
    purpose = requested_purpose(request)
    importer = BulkImporter(services)
    base = f"{services.settings.base_url()}/fhir"
    request_url = f"{base}/$import"
    try:
        _check_accept(request)
        if "respond-async" not in _preferences(request):
            raise InvalidInput(
                "A bulk import needs the header 'Prefer: respond-async'.", expression=["Prefer"]
            )
        media_type = _media_type(request)
        if media_type not in NDJSON_TYPES | _JSON_TYPES:
            raise UnsupportedMediaType(
                "Send NDJSON (application/fhir+ndjson) or a Parameters resource "
                "(application/fhir+json)."
            )
        creatable = set(await asyncio.to_thread(importer.creatable, principal, purpose))
        await asyncio.to_thread(importer.check_capacity, principal)
        if media_type in NDJSON_TYPES:
            uploaded = await _upload(request, importer, principal, request_url)
            url = f"{base}/$import-file/{uploaded.id}"
            inputs = [ImportInput(url, uploaded.digest, uploaded.size)]
        else:
            pairs = parse_import_parameters(await _parameters(request))
            for _, res_type in pairs:
                if res_type is not None and res_type not in creatable:
                    raise Forbidden(f"You may not create {res_type} resources.")

            def resolve() -> list[ImportInput]:
                return [
                    ImportInput(url, *importer.resolve(principal, url, base), res_type)
                    for url, res_type in pairs
                ]

            inputs = await asyncio.to_thread(resolve)
    except SalusError as exc:
        if not isinstance(exc, NotAuthenticated | Forbidden):
            detail = {"error": exc.code}
            await _record(services, principal, "E", "$import", "bulk import kick-off", detail)
        raise
    started = await _audited(
        services,
        principal,
        "E",
        "$import",
        "bulk import kick-off",
        lambda: importer.kick_off(principal, purpose, inputs, request_url),
        lambda found: {"import": found.id, "inputs": len(found.inputs)},
    )
    return JSONResponse(
        _information("The import was accepted; poll the Content-Location URL."),
        status_code=202,
        headers={"Content-Location": f"{base}/$import-status/{started.id}"},
        media_type=FHIR_JSON,
    )


async def _upload_file(request: Request) -> Response:
    """``POST [base]/$import-file``: one NDJSON file, to be named by an import."""
    principal = await current_principal(request)
    services = services_of(request)
    purpose = requested_purpose(request)
    importer = BulkImporter(services)
    base = f"{services.settings.base_url()}/fhir"
    try:
        _check_accept(request)
        if _media_type(request) not in NDJSON_TYPES:
            raise UnsupportedMediaType("Upload NDJSON (application/fhir+ndjson).")
        await asyncio.to_thread(importer.creatable, principal, purpose)
        uploaded = await _upload(request, importer, principal, f"{base}/$import-file")
    except SalusError as exc:
        if not isinstance(exc, NotAuthenticated | Forbidden):
            failed = {"error": exc.code}
            await _record(services, principal, "C", "$import-file", "bulk import upload", failed)
        raise
    detail = {"file": uploaded.id, "size": uploaded.size}
    await _record(
        services, principal, "C", f"$import-file/{uploaded.id}", "bulk import upload", detail
    )
    url = f"{base}/$import-file/{uploaded.id}"
    return JSONResponse(
        _information(f"Stored {uploaded.size} bytes; name {url} as an $import input."),
        status_code=201,
        headers={"Location": url},
        media_type=FHIR_JSON,
    )


def import_result(found: Import) -> dict[str, Any]:
    """The body of a completed import's status: counts per input, rejected lines,
    and the same as an OperationOutcome summary."""
    result = found.result or {}
    counts = result.get("counts") or [{} for _ in found.inputs]
    errors = result.get("errors") or []
    output: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for item, count in zip(found.inputs, counts, strict=False):
        created, updated = int(count.get("created", 0)), int(count.get("updated", 0))
        entry: dict[str, Any] = {
            "inputUrl": item.url,
            "count": created + updated,
            "created": created,
            "updated": updated,
        }
        if item.type:
            entry["type"] = item.type
        output.append(entry)
        if count.get("rejected"):
            failures.append({"inputUrl": item.url, "count": int(count["rejected"])})
    lines = [
        {
            "inputUrl": found.inputs[e["input"]].url,
            "line": e["line"],
            "reason": e["reason"],
            **({"expression": e["expression"]} if e.get("expression") else {}),
        }
        for e in errors
        if 0 <= e.get("input", -1) < len(found.inputs)
    ]
    totals = {
        key: sum(int(c.get(key, 0)) for c in counts) for key in ("created", "updated", "rejected")
    }
    summary = (
        f"{totals['created']} created, {totals['updated']} updated, "
        f"{totals['rejected']} lines rejected"
    )
    if totals["rejected"] > len(lines):
        summary += f" (the first {len(lines)} listed)"
    issues: list[dict[str, Any]] = [
        {"severity": "information", "code": "informational", "diagnostics": summary}
    ]
    for error, line in zip(errors, lines, strict=False):
        issue: dict[str, Any] = {
            "severity": "error",
            "code": error.get("code") or "invalid",
            "diagnostics": f"{line['inputUrl']} line {line['line']}: {line['reason']}",
        }
        if line.get("expression"):
            issue["expression"] = [line["expression"]]
        issues.append(issue)
    transaction_time = found.transaction_time
    return {
        "transactionTime": (
            transaction_time.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            if transaction_time
            else None
        ),
        "request": found.request_url,
        "requiresAccessToken": True,
        "output": output,
        "error": failures,
        "rejected": lines,
        "outcome": {"resourceType": "OperationOutcome", "issue": issues},
    }


async def _status(request: Request) -> Response:
    """``GET``/``DELETE [base]/$import-status/{id}``."""
    principal = await current_principal(request)
    services = services_of(request)
    import_id = str(request.path_params["id"])
    importer = BulkImporter(services)
    entity = f"$import-status/{_safe(import_id)}"

    def detail(found: Import) -> dict[str, Any]:
        return {"import": found.id, "status": found.status.value}

    if request.method == "DELETE":
        await _audited(
            services,
            principal,
            "D",
            entity,
            "bulk import cancelled",
            lambda: importer.cancel(principal, import_id),
            detail,
        )
        return JSONResponse(
            _information("The import was cancelled."), status_code=202, media_type=FHIR_JSON
        )
    found = await _audited(
        services,
        principal,
        "R",
        entity,
        "bulk import status",
        lambda: importer.owned(principal, import_id),
        detail,
    )
    if found.status.value in ACTIVE:
        headers = {
            "X-Progress": (found.progress or found.status.value)[:200],
            "Retry-After": str(RETRY_AFTER_SECONDS),
        }
        return Response(status_code=202, headers=headers)
    if found.status is ImportState.COMPLETED:
        return JSONResponse(import_result(found), media_type="application/json")
    failure = SalusError(f"The import failed: {found.error or 'unknown error'}")
    return JSONResponse(
        failure.to_operation_outcome(request_id_var.get()),
        status_code=failure.http_status,
        media_type=FHIR_JSON,
    )


def install_import_routes(api: FastAPI) -> None:
    """Add the bulk import routes (``FhirApp`` leaves ``$import`` paths to FastAPI)."""
    api.add_route("/fhir/$import", _kick_off, methods=["POST"], include_in_schema=False)
    api.add_route("/fhir/$import-file", _upload_file, methods=["POST"], include_in_schema=False)
    api.add_route(
        "/fhir/$import-status/{id}", _status, methods=["GET", "DELETE"], include_in_schema=False
    )
