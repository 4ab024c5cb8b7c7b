"""HTTP routes of the open data.

* ``POST /api/v1/open-data/publications`` (the health authority's
  ``authority_analyst`` or ``administrator``): body
  ``{"indicators": ["admissions", {"id": "discharges", "by": ["sex"]}],
  "periods": ["2026-10"], "title", "description", "licence", "refresh"}``;
  201 with the publication record and ``Location``.
* ``GET /api/v1/open-data/publications``: the records with who published
  (the same callers).
* Open to anyone, without authentication (it is open data):
  ``GET /open-data/publications`` (newest first),
  ``GET /open-data/publications/{id}`` and
  ``GET /open-data/publications/{id}/files/{name}`` (the file as published:
  ``ETag`` and ``Repr-Digest`` (RFC 9530) carry its SHA-256).
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from salus.errors import InvalidInput
from salus.security.principal import PrincipalKind
from salus.server.security import current_principal, services_of
from salus.warehouse.opendata.publish import OpenData, PublicationRequest

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["install_opendata_routes"]


async def _publish(request: Request) -> Response:
    principal = await current_principal(request)
    data = OpenData(services_of(request))
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError:
        raise InvalidInput("The body is not JSON.") from None
    parsed = PublicationRequest.from_json(body)
    data.publisher(principal, parsed.org)  # 403 before any work
    record = await asyncio.to_thread(data.publish, principal, parsed)
    return JSONResponse(record, status_code=201, headers={"Location": record["url"]})


async def _private_list(request: Request) -> Response:
    principal = await current_principal(request)
    data = OpenData(services_of(request))
    if principal.kind is not PrincipalKind.SYSTEM:
        data.publisher(principal)
    return JSONResponse({"publications": await asyncio.to_thread(data.list, private=True)})


async def _list(request: Request) -> Response:
    data = OpenData(services_of(request))
    return JSONResponse({"publications": await asyncio.to_thread(data.list)})


async def _one(request: Request) -> Response:
    data = OpenData(services_of(request))
    return JSONResponse(await asyncio.to_thread(data.get, str(request.path_params["id"])))


async def _file(request: Request) -> Response:
    data = OpenData(services_of(request))
    body, media_type, digest = await asyncio.to_thread(
        data.file, str(request.path_params["id"]), str(request.path_params["name"])
    )
    b64 = base64.b64encode(bytes.fromhex(digest)).decode()
    headers = {
        "ETag": f'"{digest}"',
        "Repr-Digest": f"sha-256=:{b64}:",
        "Cache-Control": "public, max-age=31536000, immutable",
        "Content-Disposition": f'attachment; filename="{request.path_params["name"]}"',
    }
    if request.headers.get("if-none-match") == f'"{digest}"':
        return Response(status_code=304, headers=headers)
    kind = f"{media_type}; charset=utf-8"
    return Response(body, media_type=kind, headers=headers)


def install_opendata_routes(api: FastAPI) -> None:
    api.add_route(
        "/api/v1/open-data/publications", _publish, methods=["POST"], include_in_schema=False
    )
    api.add_route(
        "/api/v1/open-data/publications", _private_list, methods=["GET"], include_in_schema=False
    )
    api.add_route("/open-data/publications", _list, methods=["GET"], include_in_schema=False)
    api.add_route("/open-data/publications/{id}", _one, methods=["GET"], include_in_schema=False)
    api.add_route(
        "/open-data/publications/{id}/files/{name}", _file, methods=["GET"], include_in_schema=False
    )
