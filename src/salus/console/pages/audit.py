"""Audit pages for security officers: search the trail, "who looked at this
patient", and the chain's verification status.

Everything goes through the same services as ``GET /api/v1/audit/events``
and ``GET /api/v1/audit/patient-access`` (:mod:`salus.audit.fhir`), with the
same policy decision (``AuditEvent`` search/read): a hospital's security
officers see the events of their own organization, the network operator's
all of them. Each search and report is itself audited. Verification
(:func:`salus.audit.verify.verify_chain`, as ``salus audit verify``) reads
the whole trail, so it runs when asked (a CSRF-protected form) and the page
shows the last result.

Event fields follow FHIR R4 ``AuditEvent`` (``action`` C/R/U/D/E,
``outcome`` 0/4/8/12, ``purposeOfEvent`` from v3 ActReason).
"""

from __future__ import annotations

import asyncio
import time as clock
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from sqlalchemy import select

from salus.audit.events import AuditCategory, AuditOutcome
from salus.audit.fhir import patient_access_report, search_events
from salus.audit.verify import VerifyReport, verify_chain
from salus.console import i18n
from salus.console.web import (
    ConsoleUser,
    NavItem,
    Paging,
    check_csrf,
    console_router,
    has_role,
    nav_item,
    read_form,
    render,
)
from salus.db.tables import users
from salus.errors import Forbidden, InvalidInput
from salus.security.policy import AccessRequest, Interaction, RecordFilter
from salus.security.principal import Principal, Purpose
from salus.server.security import audit_access, services_of
from salus.services import Services

__all__ = ["install"]

_ = i18n.gettext
N_ = i18n.N_

ACTIONS = {
    "C": N_("create"),
    "R": N_("read"),
    "U": N_("update"),
    "D": N_("delete"),
    "E": N_("execute"),
}
OUTCOMES = {
    AuditOutcome.SUCCESS: N_("success"),
    AuditOutcome.MINOR: N_("refused or failed"),
    AuditOutcome.SERIOUS: N_("serious failure"),
    AuditOutcome.MAJOR: N_("major failure"),
}
PURPOSES = {
    Purpose.TREATMENT.value: N_("treatment"),
    Purpose.OPERATIONS.value: N_("healthcare operations"),
    Purpose.RESEARCH.value: N_("research"),
    Purpose.PUBLIC_HEALTH.value: N_("public health"),
    Purpose.EMERGENCY.value: N_("emergency (break-the-glass)"),
}
CATEGORIES = [c.value for c in AuditCategory]

#: The last verification per Services object: (monotonic time, wall time, report).
_VERIFIED: dict[int, tuple[float, datetime, VerifyReport]] = {}


def _scope(services: Services, who: Principal, interaction: Interaction) -> RecordFilter:
    decision = services.policy.authorize(who, AccessRequest("AuditEvent", interaction))
    return decision.require()


def _date(value: str | None, name: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInput(N_("Dates are written YYYY-MM-DD."), expression=[name]) from None


@dataclass(frozen=True, slots=True)
class Search:
    who: str
    patient: str
    org: str
    category: str
    purpose: str
    outcome: str
    since: date | None
    until: date | None

    @property
    def empty(self) -> bool:
        return not any(
            [self.who, self.patient, self.org, self.category, self.purpose, self.outcome]
        ) and (self.since is None and self.until is None)


def _search_of(request: Request) -> Search:
    params = request.query_params

    def text(name: str, size: int = 100) -> str:
        return (params.get(name) or "").strip()[:size]

    found = Search(
        who=text("who"),
        patient=text("patient", 64),
        org=text("org", 64),
        category=text("category", 20),
        purpose=text("purpose", 20),
        outcome=text("outcome", 2),
        since=_date(params.get("since"), "since"),
        until=_date(params.get("until"), "until"),
    )
    if found.category and found.category not in CATEGORIES:
        raise InvalidInput(N_("Unknown kind of event."), expression=["category"])
    if found.purpose and found.purpose not in PURPOSES:
        raise InvalidInput(N_("Unknown purpose of use."), expression=["purpose"])
    if found.outcome and found.outcome not in {str(int(o)) for o in OUTCOMES}:
        raise InvalidInput(N_("Unknown outcome."), expression=["outcome"])
    return found


def _principal_id(services: Services, who: str) -> str:
    """A username's user id (the trail records ids); anything else as given."""
    with services.db.read() as conn:
        found = conn.execute(select(users.c.id).where(users.c.username == who)).scalar()
    return str(found) if found else who


def _names(services: Services, rows: list[dict[str, Any]]) -> dict[str, str]:
    """User id → username for the users on a page."""
    ids = {str(r["principal_id"]) for r in rows if r.get("principal_kind") == "user"}
    if not ids:
        return {}
    with services.db.read() as conn:
        found = conn.execute(
            select(users.c.id, users.c.username).where(users.c.id.in_(sorted(ids)))
        ).all()
    return {str(i): str(name) for i, name in found}


def _window(since: date | None, until: date | None) -> tuple[datetime | None, datetime | None]:
    start = datetime.combine(since, time(), UTC) if since else None
    end = datetime.combine(until + timedelta(days=1), time(), UTC) if until else None
    return start, end


def _run_search(
    services: Services, search: Search, org: str | None, limit: int, offset: int
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    start, end = _window(search.since, search.until)
    rows = search_events(
        services.db,
        patient_key=search.patient or None,
        principal_id=_principal_id(services, search.who) if search.who else None,
        org_id=org,
        since=start,
        until=end,
        outcome=int(search.outcome) if search.outcome else None,
        category=search.category or None,
        purpose=search.purpose or None,
        limit=limit,
        offset=offset,
    )
    return rows, _names(services, rows)


def _page(paging: Paging, fetched: list[Any]) -> tuple[Paging, list[Any]]:
    if len(fetched) <= paging.size:
        return paging.with_total(paging.offset + len(fetched)), fetched
    return paging, fetched[: paging.size]


def _verify(services: Services) -> tuple[datetime, VerifyReport]:
    report = verify_chain(
        services.db,
        signer=services.signing_keys,
        checkpoint_file=services.settings.audit_checkpoint_path(),
    )
    now = datetime.now(UTC)
    _VERIFIED[id(services)] = (clock.monotonic(), now, report)
    return now, report


def _last_verification(services: Services) -> tuple[datetime, VerifyReport] | None:
    found = _VERIFIED.get(id(services))
    return None if found is None else (found[1], found[2])


def install(api: FastAPI) -> None:
    router = console_router()
    nav_item(NavItem("/audit", N_("Audit"), 60, has_role("security_officer"), key="a"))

    @router.get("/audit")
    async def audit(request: Request, principal: ConsoleUser) -> Response:
        services = services_of(request)
        flt = _scope(services, principal, Interaction.SEARCH)
        search = _search_of(request)
        if not flt.all_orgs:
            if search.org not in ("", flt.own_org):
                raise Forbidden(N_("Security officers of a hospital see its own events only."))
            org: str | None = flt.own_org
        else:
            org = search.org or None
        paging = Paging.of(request)
        fetched, names = await asyncio.to_thread(
            _run_search, services, search, org, paging.size + 1, paging.offset
        )
        paging, rows = _page(paging, fetched)
        orgs = (
            await asyncio.to_thread(services.directory.list_organizations) if flt.all_orgs else []
        )
        await audit_access(
            request,
            principal,
            category="rest",
            entity="AuditEvent?search",
            patient_key=search.patient or None,
            description="audit trail searched",
        )
        return render(
            request,
            "audit/search.html",
            {
                "search": search,
                "rows": rows,
                "names": names,
                "paging": paging,
                "orgs": orgs,
                "network": flt.all_orgs,
                "categories": CATEGORIES,
                "purposes": PURPOSES,
                "outcomes": {str(int(k)): v for k, v in OUTCOMES.items()},
                "actions": ACTIONS,
                "verified": _last_verification(services),
            },
            title=_("Audit trail"),
        )

    @router.get("/audit/patients")
    async def patient_form(request: Request, principal: ConsoleUser) -> Response:
        patient = (request.query_params.get("patient") or "").strip()[:64]
        return await patient_report(request, patient, principal)

    @router.get("/audit/patients/{patient}")
    async def patient_report(request: Request, patient: str, principal: ConsoleUser) -> Response:
        services = services_of(request)
        flt = _scope(services, principal, Interaction.READ)
        patient = patient.strip()[:64]
        since = _date(request.query_params.get("since"), "since")
        paging = Paging.of(request)
        rows: list[dict[str, Any]] = []
        names: dict[str, str] = {}
        if patient:
            start = datetime.combine(since, time(), UTC) if since else None
            fetched = await asyncio.to_thread(
                lambda: patient_access_report(
                    services.db,
                    patient,
                    start,
                    limit=paging.offset + paging.size + 1,
                    org_id=None if flt.all_orgs else flt.own_org,
                )
            )
            paging, rows = _page(paging, fetched[paging.offset :])
            names = await asyncio.to_thread(_names, services, rows)
            await audit_access(
                request,
                principal,
                category="rest",
                entity="patient-access-report",
                patient_key=patient,
                description="patient access report",
            )
        return render(
            request,
            "audit/patient.html",
            {
                "patient": patient,
                "since": since,
                "rows": rows,
                "names": names,
                "paging": paging,
                "purposes": PURPOSES,
                "outcomes": {int(k): v for k, v in OUTCOMES.items()},
                "actions": ACTIONS,
                "network": flt.all_orgs,
            },
            title=_("Who looked at this patient"),
        )

    @router.get("/audit/verify")
    async def verification(request: Request, principal: ConsoleUser) -> Response:
        services = services_of(request)
        _scope(services, principal, Interaction.SEARCH)
        return render(
            request,
            "audit/verify.html",
            {"verified": _last_verification(services), "fresh": False},
            title=_("Audit chain verification"),
        )

    @router.post("/audit/verify")
    async def verify(request: Request, principal: ConsoleUser) -> Response:
        form = await read_form(request)
        check_csrf(request, form)
        services = services_of(request)
        _scope(services, principal, Interaction.SEARCH)
        verified = await asyncio.to_thread(_verify, services)
        await audit_access(
            request,
            principal,
            category="security",
            action="E",
            entity="audit-chain",
            description="audit trail verified: "
            + ("intact" if verified[1].ok else "BROKEN")
            + f" ({verified[1].events_checked} events)",
        )
        return render(
            request,
            "audit/verify.html",
            {"verified": verified, "fresh": True},
            title=_("Audit chain verification"),
        )

    api.include_router(router)
