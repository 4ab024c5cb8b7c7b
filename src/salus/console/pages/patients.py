"""Patient search and the integrated patient record (issue 8).

* ``GET /patients``: FHIR Patient search (search.html; parameters ``name``,
  ``identifier``, ``birthdate``, ``gender``) through the FHIR router with the
  signed-in person's principal, so a clinician sees exactly the Patients the
  policy lets through, paged with ``_count``/``_offset``.
* ``GET /patients/{id}``: demographics, identifiers per hospital and a
  timeline across hospitals (see :mod:`.patients_record` for how one person's
  Patients are linked), filtered by kind and hospital, paged. When the Patient
  is not visible, the page says why (the access basis of
  ``/api/v1/patients/{id}/access``) and offers break-the-glass
  (:mod:`.breakglass`).
* ``GET /patients/{id}/documents/{doc}/{n}``: the n-th attachment of a
  DocumentReference (inline ``data`` or a ``Binary`` reference), served so that
  it cannot run script in the console's origin.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from salus.console import i18n
from salus.console.i18n import N_
from salus.console.pages import patients_fhir as fhir
from salus.console.pages.patients_record import (
    KINDS,
    Demographics,
    demographics,
    entries_of,
    link_targets,
    national_ids,
    patient_label,
    subject_of,
)
from salus.console.web import (
    ConsoleUser,
    NavItem,
    Paging,
    console_router,
    has_role,
    nav_item,
    render,
)
from salus.errors import Forbidden, Gone, InvalidInput, NotFound
from salus.security.policy import Interaction
from salus.security.principal import Principal
from salus.security.roles import ROLES
from salus.server.audit_routes import access_basis as api_access_basis  # as the API answers
from salus.server.security import audit_access, audit_refusal, services_of

__all__ = ["install"]

_ = i18n.gettext

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")
GENDERS = (N_("female"), N_("male"), N_("other"), N_("unknown"))
#: Attachment types shown in the browser; anything else is downloaded.
INLINE_TYPES = frozenset({"application/pdf", "image/png", "image/jpeg", "text/plain"})
MAX_LINKED = 20


def care_reader(request: Request, principal: Principal, res_type: str = "Patient") -> None:
    """Patient pages are for care: de-identified roles (research, public health)
    and roles without the scope are refused (403, audited by the route class)."""
    decision = fhir.decide(request, principal, res_type, Interaction.READ)
    decision.require()
    if decision.deidentify:
        raise Forbidden(
            N_("Patient records are for care; de-identified roles use research extracts.")
        )


def can_break_glass(principal: Principal) -> bool:
    return any(ROLES[r].break_glass for r in principal.roles if r in ROLES)


def check_patient_id(patient_id: str) -> str:
    if not _ID.match(patient_id):
        raise NotFound(N_("Not found."))
    return patient_id


async def access_basis(request: Request, principal: Principal, patient_id: str) -> dict[str, Any]:
    """Why this person may or may not see other hospitals' records of a patient."""
    services = services_of(request)
    decision = fhir.decide(request, principal, "Patient", Interaction.READ)
    flt = decision.require()
    basis: dict[str, Any] = await asyncio.to_thread(
        api_access_basis,
        services,
        principal.org_id,
        principal.id,
        principal.kind.value,
        patient_id,
        flt.care_sharing,
    )
    await audit_access(
        request,
        principal,
        category="rest",
        entity="patient-access-basis",
        patient_key=patient_id,
        purpose=decision.purpose,
        description="access basis checked",
    )
    return basis


# -- search --------------------------------------------------------------------------


def _criteria(request: Request) -> dict[str, str]:
    params = request.query_params
    values = {
        k: (params.get(k) or "").strip()[:100]
        for k in ("name", "identifier", "birthdate", "gender")
    }
    if values["birthdate"] and not _DATE.match(values["birthdate"]):
        raise InvalidInput(
            N_("Birth date is YYYY, YYYY-MM or YYYY-MM-DD."), expression=["birthdate"]
        )
    if values["gender"] and values["gender"] not in GENDERS:
        values["gender"] = ""
    return values


def _fhir_params(criteria: dict[str, str], paging: Paging) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    if criteria["name"]:
        params.append(("name", criteria["name"]))
    if criteria["identifier"]:
        params.append(("identifier", criteria["identifier"]))
    if criteria["birthdate"]:
        params.append(("birthdate", criteria["birthdate"]))
    if criteria["gender"]:
        params.append(("gender", criteria["gender"]))
    params += [("_count", str(paging.size)), ("_offset", str(paging.offset))]
    return params


def _row(patient: dict[str, Any], org: str, names: dict[str, str]) -> dict[str, Any]:
    shown = demographics(patient, org)
    return {
        "id": shown.id,
        "label": patient_label(patient),
        "names": shown.names,
        "birth_date": shown.birth_date,
        "gender": shown.gender,
        "identifiers": shown.identifiers,
        "org": org,
        "org_name": names.get(org, org),
    }


# -- the record ------------------------------------------------------------------------


async def _linked(
    request: Request, principal: Principal, patient: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """The opened Patient and the visible Patients of the same person."""
    linked = {str(patient["id"]): patient}
    for system, value in national_ids(patient):
        found, _total = await fhir.search(
            request,
            principal,
            "Patient",
            [("identifier", f"{system}|{value}"), ("_count", str(MAX_LINKED))],
        )
        for other in found:
            linked.setdefault(str(other["id"]), other)
    for other_id in [t for p in list(linked.values()) for t in link_targets(p)][:MAX_LINKED]:
        if other_id in linked or not _ID.match(other_id):
            continue
        try:
            linked[other_id] = await fhir.read(request, principal, "Patient", other_id)
        except (NotFound, Gone):
            continue  # not visible to this reader, or merged away
    return linked


async def _timeline(
    request: Request, principal: Principal, patient_ids: list[str]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    refs = ",".join(f"Patient/{i}" for i in patient_ids)
    types = [t for _key, _label, kind_types in KINDS for t in kind_types]

    async def one(res_type: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
        try:
            found = await fhir.search_all(request, principal, res_type, [("patient", refs)])
        except Forbidden:
            return [], {}  # a role without this type's scope sees no such section
        held = await fhir.holders(request, principal, res_type, [str(r["id"]) for r in found])
        return found, {f"{res_type}/{k}": v for k, v in held.items()}

    results = await asyncio.gather(*(one(t) for t in types))
    resources = [r for found, _h in results for r in found]
    holders = {k: v for _f, held in results for k, v in held.items()}
    return resources, holders


def install(api: FastAPI) -> None:
    router = console_router()
    nav_item(NavItem("/patients", "Patients", 10, has_role("clinician"), key="p"))

    @router.get("/patients")
    async def search_page(request: Request, principal: ConsoleUser) -> Response:
        care_reader(request, principal)
        criteria = _criteria(request)
        paging = Paging.of(request, size=20, max_size=100)
        found, total = await fhir.search(
            request, principal, "Patient", _fhir_params(criteria, paging)
        )
        held = await fhir.holders(request, principal, "Patient", [str(p["id"]) for p in found])
        names = await fhir.org_names(request)
        rows = [_row(p, held.get(str(p["id"]), ""), names) for p in found]
        return render(
            request,
            "patients/search.html",
            {
                "criteria": criteria,
                "genders": GENDERS,
                "rows": rows,
                "paging": paging.with_total(total),
                "searched": any(criteria.values()),
            },
            title=_("Patients"),
        )

    @router.get("/patients/{patient_id}")
    async def record_page(request: Request, patient_id: str, principal: ConsoleUser) -> Response:
        care_reader(request, principal)
        check_patient_id(patient_id)
        try:
            patient = await fhir.read(request, principal, "Patient", patient_id)
        except NotFound:
            return await _restricted(request, principal, patient_id)
        linked = await _linked(request, principal, patient)
        held = await fhir.holders(request, principal, "Patient", list(linked))
        names = await fhir.org_names(request)
        people: list[Demographics] = [
            demographics(p, held.get(pid, "")) for pid, p in linked.items()
        ]
        resources, holders = await _timeline(request, principal, list(linked))
        patient_of = {f"{r['resourceType']}/{r['id']}": subject_of(r) for r in resources}
        entries = entries_of(resources, holders, patient_of)
        orgs = sorted({e.org for e in entries} | {d.org for d in people})
        kind = request.query_params.get("kind", "")
        org = request.query_params.get("org", "")
        counts = {key: sum(1 for e in entries if e.kind == key) for key, _l, _t in KINDS}
        shown = [e for e in entries if (not kind or e.kind == kind) and (not org or e.org == org)]
        paging = Paging.of(request, size=25, max_size=200).with_total(len(shown))
        page = shown[paging.offset : paging.offset + paging.size]
        emergency = []
        for pid in linked:
            if held.get(pid) and held[pid] != principal.org_id:
                basis = await access_basis(request, principal, pid)
                if basis["break_glass_until"]:
                    emergency.append(basis["break_glass_until"])
        return render(
            request,
            "patients/record.html",
            {
                "patient": demographics(patient, held.get(patient_id, "")),
                "label": patient_label(patient),
                "people": people,
                "entries": page,
                "kinds": KINDS,
                "counts": counts,
                "orgs": orgs,
                "org_names": names,
                "kind": kind,
                "org": org,
                "paging": paging,
                "emergency_until": max(emergency) if emergency else None,
            },
            title=patient_label(patient),
        )

    async def _restricted(request: Request, principal: Principal, patient_id: str) -> Response:
        basis = await access_basis(request, principal, patient_id)
        if basis["break_glass_until"]:
            raise NotFound(N_("Not found."))  # emergency access is held: there is no such record
        refusal = Forbidden("This patient's records are not available to you.")
        await audit_refusal(request, refusal, request.url.path)
        return render(
            request,
            "patients/restricted.html",
            {
                "patient_id": patient_id,
                "basis": basis,
                "denied": any(r["decision"] == "deny" for r in basis["consent_rules"]),
                "offer": can_break_glass(principal) and basis["break_glass_available"],
                "reason": "",
                "error": None,
            },
            status_code=403,
            title=_("Access restricted"),
        )

    @router.get("/patients/{patient_id}/documents/{doc_id}/{index}")
    async def attachment(
        request: Request, patient_id: str, doc_id: str, index: int, principal: ConsoleUser
    ) -> Response:
        care_reader(request, principal, "DocumentReference")
        check_patient_id(patient_id)
        check_patient_id(doc_id)
        doc = await fhir.read(request, principal, "DocumentReference", doc_id)
        contents = doc.get("content") or []
        if not 0 <= index < len(contents):
            raise NotFound(N_("Not found."))
        item = contents[index].get("attachment") or {}
        content_type = str(item.get("contentType") or "application/octet-stream")
        data = item.get("data")
        url = str(item.get("url") or "")
        if data is None and url.startswith("Binary/") and _ID.match(url[7:]):
            binary = await fhir.read(request, principal, "Binary", url[7:])
            data = binary.get("data")
            content_type = str(binary.get("contentType") or content_type)
        if not isinstance(data, str):
            raise NotFound(N_("This attachment has no content stored in Salus."))
        try:
            body = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(N_("The attachment is not valid base64.")) from None
        media = content_type.split(";")[0].strip().lower()
        inline = media in INLINE_TYPES
        return Response(
            body,
            media_type=media if inline else "application/octet-stream",
            headers={
                "Content-Disposition": "inline" if inline else "attachment",
                "Content-Security-Policy": "sandbox; default-src 'none'; img-src 'self' data:",
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-store",
            },
        )

    api.include_router(router)
