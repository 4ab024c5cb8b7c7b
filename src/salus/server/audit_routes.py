"""Audit and care-access endpoints.

* ``GET /api/v1/audit/events``: the audit trail as a FHIR ``Bundle`` of
  ``AuditEvent`` (searchset), filtered by the policy engine (security officers
  see their organization's events, network security officers all).
* ``GET /api/v1/audit/patient-access?patient=…``: who looked at this patient's
  record, when and why.
* ``POST /api/v1/break-glass`` (clinicians) and the review queue
  ``GET /api/v1/break-glass/reviews`` / ``POST …/{id}`` (security officers).
* ``POST /api/v1/care/treatment-relationships`` and ``/consents``: care data
  the cross-hospital filter consults (also derived from FHIR and HL7 feeds).
* ``GET /api/v1/patients/{patient}/access``: what the caller may see of a
  patient, and why (for the console's break-the-glass prompt).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from salus.audit.fhir import patient_access_report, search_events, to_fhir
from salus.db.tables import btg_grants, consents, treatment_relationships
from salus.db.types import utcnow
from salus.errors import Forbidden
from salus.security.policy import AccessRequest, Interaction
from salus.server.security import CurrentPrincipal, audit_access, requested_purpose, services_of

__all__ = ["install_audit_routes"]


class BreakGlassIn(BaseModel):
    patient: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=2000)


class ReviewIn(BaseModel):
    outcome: Literal["accepted", "rejected"]
    note: str = Field(default="", max_length=2000)


class TreatmentIn(BaseModel):
    patient: str = Field(min_length=1, max_length=64)
    source: str = Field(min_length=1, max_length=200)
    valid_from: datetime | None = None
    valid_until: datetime | None = None


class ConsentIn(BaseModel):
    patient: str = Field(min_length=1, max_length=64)
    decision: Literal["permit", "deny"]
    grantee_org: str | None = None
    category: str = Field(default="*", min_length=1, max_length=64)
    source: str = Field(min_length=1, max_length=200)
    valid_from: datetime | None = None
    valid_until: datetime | None = None


def install_audit_routes(api: FastAPI) -> None:
    @api.get("/api/v1/audit/events", tags=["audit"])
    async def audit_events(
        request: Request,
        who: CurrentPrincipal,
        patient: str | None = Query(default=None, max_length=64),
        agent: str | None = Query(default=None, max_length=100),
        since: datetime | None = None,
        until: datetime | None = None,
        outcome: int | None = None,
        count: int = Query(default=50, ge=1, le=500),
        offset: int = Query(default=0, ge=0),
    ) -> dict[str, Any]:
        """The audit trail as a FHIR searchset Bundle of AuditEvent resources."""
        services = services_of(request)
        decision = services.policy.authorize(
            who, AccessRequest("AuditEvent", Interaction.SEARCH, requested_purpose(request))
        )
        flt = decision.require()
        org = None if flt.all_orgs else flt.own_org
        rows = await asyncio.to_thread(
            search_events,
            services.db,
            patient_key=patient,
            principal_id=agent,
            org_id=org,
            since=since,
            until=until,
            outcome=outcome,
            limit=count,
            offset=offset,
        )
        await audit_access(
            request,
            who,
            category="rest",
            action="R",
            entity="AuditEvent?search",
            patient_key=patient,
            purpose=decision.purpose,
            description="audit trail searched",
        )
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": to_fhir(r), "search": {"mode": "match"}} for r in rows],
        }

    @api.get("/api/v1/audit/patient-access", tags=["audit"])
    async def patient_access(
        request: Request,
        who: CurrentPrincipal,
        patient: str = Query(min_length=1, max_length=64),
        since: datetime | None = None,
    ) -> dict[str, Any]:
        """Who looked at this patient's record, when, and why."""
        services = services_of(request)
        decision = services.policy.authorize(
            who, AccessRequest("AuditEvent", Interaction.READ, requested_purpose(request))
        )
        flt = decision.require()
        rows = await asyncio.to_thread(
            lambda: patient_access_report(
                services.db, patient, since=since, org_id=None if flt.all_orgs else flt.own_org
            )
        )
        await audit_access(
            request,
            who,
            category="rest",
            action="R",
            entity="patient-access-report",
            patient_key=patient,
            purpose=decision.purpose,
            description="patient access report",
        )
        return {"patient": patient, "accesses": rows}

    @api.post("/api/v1/break-glass", status_code=201, tags=["care"])
    async def break_glass(
        request: Request, who: CurrentPrincipal, body: BreakGlassIn
    ) -> dict[str, Any]:
        """Emergency access to one patient's records across hospitals, with a reason."""
        grant = await asyncio.to_thread(
            services_of(request).care.break_glass, who, body.patient, body.reason
        )
        return {"id": grant["id"], "expires_at": grant["expires_at"].isoformat()}

    @api.get("/api/v1/break-glass/reviews", tags=["care"])
    async def break_glass_queue(
        request: Request,
        who: CurrentPrincipal,
        status: Literal["pending", "accepted", "rejected"] | None = "pending",
        count: int = Query(default=100, ge=1, le=500),
        offset: int = Query(default=0, ge=0),
    ) -> list[dict[str, Any]]:
        services = services_of(request)
        rows = await asyncio.to_thread(services.care.list_break_glass, who, status, count, offset)
        await audit_access(
            request,
            who,
            category="security",
            action="R",
            entity="BreakGlass?list",
            description="break-the-glass review queue read",
        )
        return rows

    @api.post("/api/v1/break-glass/reviews/{grant_id}", tags=["care"])
    async def review(
        request: Request, who: CurrentPrincipal, grant_id: int, body: ReviewIn
    ) -> dict[str, str]:
        await asyncio.to_thread(
            services_of(request).care.review_break_glass, who, grant_id, body.outcome, body.note
        )
        return {"review_status": body.outcome}

    @api.post("/api/v1/care/treatment-relationships", status_code=201, tags=["care"])
    async def treatment(
        request: Request, who: CurrentPrincipal, body: TreatmentIn
    ) -> dict[str, int]:
        new_id = await asyncio.to_thread(
            lambda: services_of(request).care.record_treatment(
                who,
                patient_key=body.patient,
                org_id=who.org_id,
                source=body.source,
                valid_from=body.valid_from,
                valid_until=body.valid_until,
            )
        )
        return {"id": new_id}

    @api.post("/api/v1/care/consents", status_code=201, tags=["care"])
    async def consent(request: Request, who: CurrentPrincipal, body: ConsentIn) -> dict[str, int]:
        new_id = await asyncio.to_thread(
            lambda: services_of(request).care.record_consent(
                who,
                patient_key=body.patient,
                decision=body.decision,
                grantee_org_id=body.grantee_org,
                category=body.category,
                source=body.source,
                valid_from=body.valid_from,
                valid_until=body.valid_until,
            )
        )
        return {"id": new_id}

    @api.get("/api/v1/patients/{patient}/access", tags=["care"])
    async def access_basis_of_patient(
        request: Request, who: CurrentPrincipal, patient: str
    ) -> dict[str, Any]:
        """What makes this patient's records at other hospitals visible to the caller."""
        services = services_of(request)
        decision = services.policy.authorize(
            who, AccessRequest("Patient", Interaction.READ, requested_purpose(request))
        )
        if decision.deidentify:
            raise Forbidden("De-identified access does not address single patients.")
        flt = decision.require()
        result = await asyncio.to_thread(
            access_basis, services, who.org_id, who.id, who.kind.value, patient, flt.care_sharing
        )
        await audit_access(
            request,
            who,
            category="rest",
            action="R",
            entity="patient-access-basis",
            patient_key=patient,
            purpose=decision.purpose,
            description="access basis checked",
        )
        return result


def access_basis(
    services: Any,
    org_id: str,
    principal_id: str,
    principal_kind: str,
    patient: str,
    care_sharing: bool,
) -> dict[str, Any]:
    now = utcnow()
    with services.db.read() as conn:
        treatment = (
            conn.execute(
                select(treatment_relationships.c.id)
                .where(
                    treatment_relationships.c.patient_key == patient,
                    treatment_relationships.c.org_id == org_id,
                    treatment_relationships.c.valid_from <= now,
                    (treatment_relationships.c.valid_until.is_(None))
                    | (treatment_relationships.c.valid_until > now),
                )
                .limit(1)
            ).first()
            is not None
        )
        rules = [
            {
                "decision": r["decision"],
                "category": r["category"],
                "organization": r["grantee_org_id"],
            }
            for r in conn.execute(
                select(consents).where(
                    consents.c.patient_key == patient,
                    consents.c.valid_from <= now,
                    (consents.c.valid_until.is_(None)) | (consents.c.valid_until > now),
                    (consents.c.grantee_org_id.is_(None)) | (consents.c.grantee_org_id == org_id),
                )
            ).mappings()
        ]
        grant = conn.execute(
            select(btg_grants.c.expires_at)
            .where(
                btg_grants.c.patient_key == patient,
                btg_grants.c.principal_id == principal_id,
                btg_grants.c.principal_kind == principal_kind,
                btg_grants.c.expires_at > now,
            )
            .order_by(btg_grants.c.expires_at.desc())
            .limit(1)
        ).first()
    return {
        "patient": patient,
        "own_organization": org_id,
        "cross_organization_sharing": care_sharing,
        "treatment_relationship": treatment,
        "consent_rules": rules,
        "break_glass_until": grant[0].isoformat() if grant else None,
        "break_glass_available": care_sharing,
    }
