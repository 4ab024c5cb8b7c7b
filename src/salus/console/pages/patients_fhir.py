"""FHIR reads for the patient pages, through the FHIR router with the signed-in
person's principal, so the policy filter and the audit apply exactly as on
``/fhir`` (FHIR R4 http.html#read, search.html).

The router answers Bundles without the hospital that holds each record; the
pages show it, so :func:`holders` looks up the organization of resources the
router has just returned, under the same policy filter (a resource the reader
may not see has no holder here either).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import Request
from sqlalchemy import select

from salus.db.tables import fhir_resources
from salus.fhir.rest import FhirRequest
from salus.fhir.store import RESOURCE_COLUMNS
from salus.security.policy import AccessRequest, Decision, Interaction
from salus.security.principal import Principal
from salus.server.security import services_of

__all__ = ["decide", "holders", "org_names", "read", "search", "search_all"]

#: Records of one kind read for one record page (the timeline is paged on the page).
MAX_PER_KIND = 500


def decide(
    request: Request, principal: Principal, res_type: str, interaction: Interaction
) -> Decision:
    """The policy decision for the signed-in person (their roles' default purpose)."""
    return services_of(request).policy.authorize(principal, AccessRequest(res_type, interaction))


async def _handle(
    request: Request, principal: Principal, path: str, query: list[tuple[str, str]]
) -> Any:
    services = services_of(request)
    fhir_request = FhirRequest(
        method="GET",
        path=path,
        query=query,
        headers={},
        body=None,
        principal=principal,
        purpose=None,
        base_url=f"{services.settings.base_url()}/fhir",
    )
    result = await asyncio.to_thread(services.fhir_router.handle, fhir_request)
    if result.audit:
        await asyncio.gather(*(services.audit.record_async(e) for e in result.audit))
    return result.resource


async def read(
    request: Request, principal: Principal, res_type: str, res_id: str
) -> dict[str, Any]:
    """FHIR read: 404 (``NotFound``) when absent or not visible, 410 when deleted."""
    resource: dict[str, Any] = await _handle(request, principal, f"{res_type}/{res_id}", [])
    return resource


async def search(
    request: Request, principal: Principal, res_type: str, params: list[tuple[str, str]]
) -> tuple[list[dict[str, Any]], int | None]:
    """One page of a FHIR search: the matches (no includes) and the total when known."""
    bundle = await _handle(request, principal, res_type, params)
    found = [
        entry["resource"]
        for entry in bundle.get("entry", [])
        if entry.get("search", {}).get("mode", "match") == "match" and "resource" in entry
    ]
    total = bundle.get("total")
    return found, int(total) if isinstance(total, int) else None


async def search_all(
    request: Request, principal: Principal, res_type: str, params: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Up to :data:`MAX_PER_KIND` matches of a search."""
    found, _total = await search(
        request, principal, res_type, [*params, ("_count", str(MAX_PER_KIND))]
    )
    return found


def _holders(
    request: Request, principal: Principal, res_type: str, ids: list[str]
) -> dict[str, str]:
    services = services_of(request)
    flt = decide(request, principal, res_type, Interaction.READ).require()
    query = select(fhir_resources.c.res_id, fhir_resources.c.org_id).where(
        flt.where(RESOURCE_COLUMNS),
        fhir_resources.c.res_type == res_type,
        fhir_resources.c.res_id.in_(ids),
    )
    with services.db.read() as conn:
        return {str(i): str(o) for i, o in conn.execute(query, flt.params())}


async def holders(
    request: Request, principal: Principal, res_type: str, ids: list[str]
) -> dict[str, str]:
    """The organization holding each of these resources (visible ones only)."""
    if not ids:
        return {}
    return await asyncio.to_thread(_holders, request, principal, res_type, sorted(set(ids)))


_NAMES: dict[str, str] = {}
_NAMES_AT = [float("-inf")]
_NAMES_TTL = 60.0


def _load_names(request: Request) -> dict[str, str]:
    rows = services_of(request).directory.list_organizations()
    return {str(r["id"]): str(r.get("name") or r["id"]) for r in rows}


async def org_names(request: Request) -> dict[str, str]:
    """Organization names by id (cached a minute)."""
    if time.monotonic() - _NAMES_AT[0] > _NAMES_TTL:
        names = await asyncio.to_thread(_load_names, request)
        _NAMES.clear()
        _NAMES.update(names)
        _NAMES_AT[0] = time.monotonic()
    return _NAMES
