"""How the router answers with a stored resource (FHIR R4 http.html): the
``ETag``, ``Last-Modified`` and ``Location`` headers, the ``Prefer: return=``
choice (http.html#ins-return), and the audit event of a read-type
interaction, recorded before the answer leaves."""

from __future__ import annotations

from typing import Any

from salus.audit.events import AuditEvent
from salus.fhir.rest import FhirRequest, FhirResponse, http_date
from salus.fhir.store import Stored
from salus.security.policy import Decision

__all__ = ["patient_of", "preferred", "read_answer", "read_event", "with_headers"]


def patient_of(stored: Stored) -> str | None:
    """The patient whose record a resource belongs to (its compartment)."""
    return stored.res_id if stored.res_type == "Patient" else stored.patient_key


def with_headers(
    stored: Stored, request: FhirRequest, status: int, body: dict[str, Any] | None
) -> FhirResponse:
    """``body`` with the version headers of ``stored`` (and ``Location`` after a write)."""
    headers = {"ETag": stored.etag, "Last-Modified": http_date(stored.last_updated)}
    if status == 201 or request.method in ("POST", "PUT"):
        headers["Location"] = f"{request.base_url}/{stored.location}"
    return FhirResponse(status, body, headers)


def preferred(request: FhirRequest, stored: Stored, status: int) -> FhirResponse:
    """The answer to a write as ``Prefer: return=minimal|OperationOutcome|representation``
    asks (representation by default)."""
    prefer = request.headers.get("prefer", "")
    if "return=minimal" in prefer:
        return with_headers(stored, request, status, None)
    if "return=OperationOutcome" in prefer:
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "information",
                    "code": "informational",
                    "diagnostics": f"{stored.location} stored.",
                }
            ],
        }
        return with_headers(stored, request, status, outcome)
    response = with_headers(stored, request, status, stored.resource)
    response.raw = stored.raw  # the JSON just sealed, when at hand (creates)
    return response


def read_event(
    request: FhirRequest,
    decision: Decision,
    entity: str,
    description: str,
    *,
    patient_key: str | None = None,
    detail: dict[str, Any] | None = None,
    flags: str | None = None,
) -> AuditEvent:
    """The audit event of a read-type interaction (recorded before answering)."""
    return AuditEvent.for_principal(
        request.principal,
        category="rest",
        action="R",
        entity=entity,
        patient_key=patient_key,
        purpose=decision.purpose,
        description=description,
        detail=detail,
        flags=flags,
    )


def read_answer(
    request: FhirRequest, decision: Decision, stored: Stored, entity: str, description: str
) -> FhirResponse:
    """A read or vread by id (http.html#read, #vread): the resource as stored,
    its headers, and its audit event."""
    response = with_headers(stored, request, 200, stored.resource)
    response.raw = stored.raw
    response.audit.append(
        read_event(request, decision, entity, description, patient_key=patient_of(stored))
    )
    return response
