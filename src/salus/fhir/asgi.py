"""The ASGI adapter of the FHIR router: content types, headers, status codes.

Mounted at ``/fhir``. Accepts ``application/fhir+json`` and ``application/json``
(``_format=json`` too); XML is answered with 406. The principal comes from the
bearer token or session cookie, the purpose of use from
``X-Salus-Purpose-Of-Use``. Read interactions are audited (group commit)
before the response leaves.
"""

from __future__ import annotations

import asyncio
import re

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from salus import jsoncodec
from salus.errors import NotAcceptable, UnsupportedMediaType
from salus.fhir.patch import PATCH_MEDIA_TYPES
from salus.fhir.rest import FhirRequest
from salus.server.errors import handle_error
from salus.server.security import current_principal, requested_purpose, services_of

__all__ = ["FHIR_JSON", "FhirApp", "endpoint"]

FHIR_JSON = "application/fhir+json"
_JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir"}
_FORMATS = {"json", "application/json", "application/fhir+json"}
_ROUTE_SHAPES = (
    (re.compile(r"metadata"), "/fhir/metadata"),
    (re.compile(r"_history"), "/fhir/_history"),
    (re.compile(r"[A-Za-z]+/_history"), "/fhir/{type}/_history"),
    (re.compile(r"[A-Za-z]+/_search"), "/fhir/{type}/_search"),
    (re.compile(r"[A-Za-z]+/\$[a-z-]+"), "/fhir/{type}/$operation"),
    (re.compile(r"[A-Za-z]+/[^/]+/\$[a-z-]+"), "/fhir/{type}/{id}/$operation"),
    (re.compile(r"[A-Za-z]+/[^/]+/_history/[^/]+"), "/fhir/{type}/{id}/_history/{vid}"),
    (re.compile(r"[A-Za-z]+/[^/]+/_history"), "/fhir/{type}/{id}/_history"),
    (re.compile(r"[A-Za-z]+/[^/]+"), "/fhir/{type}/{id}"),
    (re.compile(r"[A-Za-z]+"), "/fhir/{type}"),
    (re.compile(r""), "/fhir"),
)

#: read and vread: ``Type/id`` and ``Type/id/_history/vid`` (no operations, no _search).
_BY_ID = re.compile(r"[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}(?:/_history/[0-9]{1,18})?")


def _template(path: str) -> str:
    """The route template for logs and metrics (never ids from the URL)."""
    for pattern, template in _ROUTE_SHAPES:
        if pattern.fullmatch(path):
            return template
    return "/fhir/*"


def _check_accept(request: Request) -> None:
    fmt = request.query_params.get("_format")
    if fmt is not None and fmt not in _FORMATS:
        raise NotAcceptable("Only JSON is supported (_format=json).")
    accept = request.headers.get("accept", "")
    if not accept:
        return
    types = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    if not types & (_JSON_TYPES | {"*/*", "application/*"}):
        raise NotAcceptable("Only application/fhir+json is supported.")


def _check_content_type(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in _JSON_TYPES:
        raise UnsupportedMediaType("Send FHIR resources as application/fhir+json.")


def _check_patch_type(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in PATCH_MEDIA_TYPES:
        raise UnsupportedMediaType(
            "Send JSON Patch (application/json-patch+json) or FHIRPath Patch "
            "(application/fhir+json Parameters)."
        )


async def endpoint(request: Request) -> Response:
    """One FHIR interaction: HTTP in, :class:`FhirRequest` to the router, HTTP out."""
    path = request.path_params.get("path", "").strip("/")
    request.scope["salus.route"] = _template(path)
    principal = await current_principal(request)
    _check_accept(request)
    body: bytes | None = None
    if request.method in ("POST", "PUT", "PATCH"):
        if request.method == "PATCH":
            _check_patch_type(request)
        elif not path.endswith("/_search"):  # POST _search sends a form
            _check_content_type(request)
        body = await request.body()
    services = services_of(request)
    fhir_request = FhirRequest(
        method=request.method,
        path=path,
        query=[(k, v) for k, v in request.query_params.multi_items() if k != "_format"],
        headers={k.lower(): v for k, v in request.headers.items()},
        body=body,
        principal=principal,
        purpose=requested_purpose(request),
        base_url=f"{services.settings.base_url()}/fhir",
    )
    if request.method == "GET" and _BY_ID.fullmatch(path):
        if services.db.is_sqlite:
            # A read or vread is one primary-key lookup in a local file: run it
            # on the event loop rather than pay a thread hand-off that costs
            # more than the lookup.
            result = services.fhir_router.handle(fhir_request)
        else:
            # PostgreSQL: the statement on an async connection, the loop free
            # during the round trip (ADR 11, stop-15 amendment).
            result = await services.fhir_router.handle_async(fhir_request)
    else:
        result = await asyncio.to_thread(services.fhir_router.handle, fhir_request)
    if len(result.audit) == 1:
        await services.audit.record_async(result.audit[0])
    elif result.audit:  # one group commit for all of them, not one commit each
        await asyncio.gather(*(services.audit.record_async(e) for e in result.audit))
    if result.resource is None:
        return Response(status_code=result.status, headers=result.headers)
    # The stored JSON when at hand, else the resource written as Starlette's
    # JSONResponse would (compact, UTF-8, no NaN), by orjson (salus.jsoncodec).
    body = result.raw
    if body is None:
        body = jsoncodec.dumps(result.resource, allow_nan=False)
    return Response(body, status_code=result.status, headers=result.headers, media_type=FHIR_JSON)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"})


class FhirApp:
    """The FHIR REST API at ``/fhir`` as a plain ASGI app.

    FHIR interactions are most of a hub's traffic and share one endpoint, so
    they skip FastAPI's router and middleware stack (which cost more than a
    read by id): the app dispatches here first (:meth:`handles`), with the
    same error handlers, gzip and request context. Bulk Data ``$export``
    and ``$import`` routes stay on FastAPI.
    """

    def __init__(self, api: FastAPI) -> None:
        self.api = api
        self._asgi = GZipMiddleware(self._serve, minimum_size=500)

    @staticmethod
    def handles(scope: Scope) -> bool:
        path: str = scope["path"]
        return (
            (path == "/fhir" or path.startswith("/fhir/"))
            and "$export" not in path
            and "$import" not in path
            and not path.startswith("/fhir/ViewDefinition")  # salus.warehouse.routes
            and "$viewdefinition-" not in path
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        for name, value in scope["headers"]:
            if name == b"accept-encoding" and b"gzip" in value:
                await self._asgi(scope, receive, send)
                return
        await self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self.api
        scope["path_params"] = {"path": scope["path"][len("/fhir") :]}
        request = Request(scope, receive)
        try:
            if scope["method"] not in _METHODS:
                allow = ", ".join(sorted(_METHODS))
                raise HTTPException(status_code=405, headers={"Allow": allow})
            response = await endpoint(request)
        except Exception as exc:
            response = await handle_error(request, exc)
        await response(scope, receive, send)
