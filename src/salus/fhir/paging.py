"""The router's offset-paged Bundles: history (FHIR R4 http.html#history) and
``Patient/$everything`` (patient-operation-everything).

Both page with ``_count`` and ``_offset`` and link to their own page and the
next one (bundle.html ``Bundle.link``); searches page with their own links
(:mod:`salus.fhir.searching`).
"""

from __future__ import annotations

from typing import Any

from salus.errors import InvalidInput
from salus.fhir.rest import FhirRequest, instant
from salus.fhir.store import Stored

__all__ = ["everything_bundle", "history_bundle", "offset_param"]


def offset_param(request: FhirRequest) -> int:
    """``_offset``: where a page starts (0 when absent)."""
    raw = request.param("_offset") or "0"
    if not raw.isdigit():
        raise InvalidInput("_offset must be a non-negative integer.", expression=["_offset"])
    return int(raw)


def _links(url: str, count: int, offset: int, more: bool) -> list[dict[str, Any]]:
    """``self`` and, when ``more``, ``next`` links of the page at ``offset``."""
    links: list[dict[str, Any]] = [
        {"relation": "self", "url": f"{url}?_count={count}&_offset={offset}"}
    ]
    if more:
        links.append({"relation": "next", "url": f"{url}?_count={count}&_offset={offset + count}"})
    return links


def _history_entry(base_url: str, stored: Stored) -> dict[str, Any]:
    """One version as a history entry: its request and response (http.html#history)."""
    entry: dict[str, Any] = {
        "fullUrl": f"{base_url}/{stored.res_type}/{stored.res_id}",
        "request": {
            "method": "DELETE" if stored.deleted else ("POST" if stored.version == 1 else "PUT"),
            "url": f"{stored.res_type}/{stored.res_id}"
            if stored.version > 1 or stored.deleted
            else stored.res_type,
        },
        "response": {
            "status": "410" if stored.deleted else ("201" if stored.version == 1 else "200"),
            "etag": stored.etag,
            "lastModified": instant(stored.last_updated),
        },
    }
    if stored.resource is not None:
        entry["resource"] = stored.resource
    return entry


def history_bundle(
    base_url: str, base: str, versions: list[Stored], total: int, count: int, offset: int
) -> dict[str, Any]:
    """The history Bundle of one page of ``versions`` (``base``: the
    ``[type]/[id]/_history`` path the interaction was asked on)."""
    return {
        "resourceType": "Bundle",
        "type": "history",
        "total": total,
        "link": _links(f"{base_url}/{base}", count, offset, offset + count < total),
        "entry": [_history_entry(base_url, stored) for stored in versions],
    }


def everything_bundle(
    base_url: str,
    patient_id: str,
    patient: Stored,
    page: list[Stored],
    total: int,
    count: int,
    offset: int,
) -> dict[str, Any]:
    """The searchset Bundle of ``Patient/$everything``: the patient on the first
    page, then one page of ``total`` compartment resources."""
    entries = [
        {
            "fullUrl": f"{base_url}/{s.res_type}/{s.res_id}",
            "resource": s.resource,
            "search": {"mode": "match"},
        }
        for s in ([patient] if offset == 0 else []) + page
        if s.resource
    ]
    url = f"{base_url}/Patient/{patient_id}/$everything"
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total + 1,
        "entry": entries,
        "link": _links(url, count, offset, offset + count < total),
    }
