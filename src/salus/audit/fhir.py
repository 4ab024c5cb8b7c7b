"""Audit events as FHIR R4 ``AuditEvent`` resources, search and access reports.

:func:`to_fhir` renders a stored event (an ``audit_events`` row) following
FHIR R4 ``auditevent.html`` and the IHE Basic Audit Log Patterns (BALP):

* ``type``: ``rest`` (``audit-event-type``) for REST interactions, DICOM
  ``110110`` *Patient Record* when a REST interaction concerns a patient,
  and the DICOM audit vocabulary (PS3.16 CID 400, system
  ``http://dicom.nema.org/resources/ontology/DCM``) for the other categories;
* ``subtype``: the FHIR interaction (``http://hl7.org/fhir/restful-interaction``)
  for REST events;
* ``agent``: the principal (``requestor`` true) with its network address and
  ``purposeOfUse`` (``http://terminology.hl7.org/CodeSystem/v3-ActReason``);
  its organization as a second agent;
* ``source``: observer *Salus*, an application server;
* ``entity``: the patient (``Reference(Patient)``), the entity acted on and
  the request id.

:func:`patient_access_report` answers "who looked at this patient's record,
when and why" (HIPAA §164.528 accounting of disclosures; GDPR Art. 15).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select

from salus.audit.events import AuditFlag, iso_utc, split_flags
from salus.db.engine import Database
from salus.db.tables import audit_events
from salus.errors import InvalidInput
from salus.security.principal import Purpose

__all__ = ["EVENT_TYPES", "patient_access_report", "search_events", "to_fhir"]

DCM = "http://dicom.nema.org/resources/ontology/DCM"
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
BALP_ENTITY_TYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
FLAGS_EXTENSION = "urn:salus:audit:flags"
HASH_EXTENSION = "urn:salus:audit:hash"

#: ``AuditEvent.type`` per category (system, code, display).
EVENT_TYPES: dict[str, tuple[str, str, str]] = {
    "rest": (AUDIT_EVENT_TYPE, "rest", "RESTful Operation"),
    "auth": (DCM, "110114", "User Authentication"),
    "admin": (DCM, "110113", "Security Alert"),
    "security": (DCM, "110113", "Security Alert"),
    "dicom": (DCM, "110103", "DICOM Instances Accessed"),
    "hl7": (DCM, "110107", "Import"),
    "export": (DCM, "110106", "Export"),
    "system": (DCM, "110100", "Application Activity"),
}
PATIENT_RECORD = (DCM, "110110", "Patient Record")
_DICOM_BY_ACTION = {
    "C": (DCM, "110104", "DICOM Instances Transferred"),
    "E": (DCM, "110112", "Query"),
}
_INTERACTIONS = frozenset(
    {
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history",
        "history-instance",
        "history-type",
        "history-system",
        "create",
        "search",
        "search-type",
        "search-system",
        "capabilities",
        "transaction",
        "batch",
        "operation",
    }
)
_INTERACTION_BY_ACTION = {
    "C": "create",
    "R": "read",
    "U": "update",
    "D": "delete",
    "E": "operation",
}
_PURPOSE_DISPLAY = {
    Purpose.TREATMENT.value: "treatment",
    Purpose.OPERATIONS.value: "healthcare operations",
    Purpose.RESEARCH.value: "healthcare research",
    Purpose.PUBLIC_HEALTH.value: "public health",
    Purpose.EMERGENCY.value: "Emergency Treatment",
}
_REFERENCE = re.compile(
    r"^[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}(/_history/[A-Za-z0-9\-.]{1,64})?$"
)


def _coding(value: tuple[str, str, str]) -> dict[str, str]:
    system, code, display = value
    return {"system": system, "code": code, "display": display}


def _purpose(code: str) -> dict[str, Any]:
    coding: dict[str, str] = {"system": ACT_REASON, "code": code}
    if code in _PURPOSE_DISPLAY:
        coding["display"] = _PURPOSE_DISPLAY[code]
    return {"coding": [coding]}


def _network(address: str) -> dict[str, str]:
    try:
        ipaddress.ip_address(address)
        kind = "2"  # IP address
    except ValueError:
        kind = "1"  # machine name
    return {"address": address, "type": kind}


def to_fhir(row: Mapping[str, Any], *, observer: str = "Salus") -> dict[str, Any]:
    """Render a stored audit event as a FHIR R4 ``AuditEvent`` resource."""
    category = str(row["category"])
    action = str(row["action"])
    patient_key = row.get("patient_key")
    detail = row.get("detail") or {}
    if category == "rest" and patient_key:
        event_type = PATIENT_RECORD
    elif category == "dicom" and action in _DICOM_BY_ACTION:
        event_type = _DICOM_BY_ACTION[action]
    else:
        event_type = EVENT_TYPES.get(category, EVENT_TYPES["system"])
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(row["seq"]),
        "type": _coding(event_type),
    }
    if category == "rest":
        interaction = detail.get("interaction") if isinstance(detail, Mapping) else None
        if interaction not in _INTERACTIONS:
            interaction = _INTERACTION_BY_ACTION[action]
        resource["subtype"] = [{"system": RESTFUL_INTERACTION, "code": interaction}]
    resource["action"] = action
    recorded_at: datetime = row["recorded_at"]
    resource["recorded"] = iso_utc(recorded_at)
    resource["outcome"] = str(int(row["outcome"]))
    if row.get("description"):
        resource["outcomeDesc"] = row["description"]
    purpose = row.get("purpose")
    if purpose:
        resource["purposeOfEvent"] = [_purpose(str(purpose))]

    agent: dict[str, Any] = {"requestor": True}
    if row.get("principal_id"):
        kind = row.get("principal_kind") or "principal"
        agent["who"] = {
            "identifier": {"system": f"urn:salus:{kind}", "value": row["principal_id"]},
            "display": f"{kind}/{row['principal_id']}",
        }
    else:
        agent["who"] = {"display": "unauthenticated"}
    if row.get("client_id") and row.get("client_id") != row.get("principal_id"):
        agent["altId"] = str(row["client_id"])
    if row.get("address"):
        agent["network"] = _network(str(row["address"]))
    if purpose:
        agent["purposeOfUse"] = [_purpose(str(purpose))]
    agents = [agent]
    if row.get("org_id"):
        agents.append(
            {
                "who": {"identifier": {"system": "urn:salus:org", "value": row["org_id"]}},
                "requestor": False,
            }
        )
    resource["agent"] = agents
    resource["source"] = {
        "observer": {"display": observer},
        "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
    }

    entities: list[dict[str, Any]] = []
    if patient_key:
        entities.append(
            {
                "what": {"reference": f"Patient/{patient_key}"},
                "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
            }
        )
    entity = row.get("entity")
    if entity:
        what = {"reference": entity} if _REFERENCE.match(str(entity)) else {"display": entity}
        entities.append(
            {
                "what": what,
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            }
        )
    if row.get("request_id"):
        entities.append(
            {
                "what": {"identifier": {"value": row["request_id"]}},
                "type": {"system": BALP_ENTITY_TYPE, "code": "XrequestId"},
            }
        )
    if entities:
        resource["entity"] = entities
    extensions = [{"url": HASH_EXTENSION, "valueString": str(row["hash"])}]
    if row.get("flags"):
        extensions.append({"url": FLAGS_EXTENSION, "valueString": str(row["flags"])})
    resource["extension"] = extensions
    return resource


def search_events(
    db: Database,
    *,
    patient_key: str | None = None,
    principal_id: str | None = None,
    org_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    outcome: int | None = None,
    category: str | None = None,
    purpose: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Stored events matching every given filter, newest first.

    ``since`` is inclusive and ``until`` exclusive (``recorded_at``);
    ``limit`` is 1 to 1000.
    """
    if not 1 <= limit <= 1000 or offset < 0:
        raise InvalidInput("limit must be 1 to 1000 and offset not negative.")
    query = select(audit_events).order_by(audit_events.c.seq.desc()).limit(limit).offset(offset)
    if patient_key is not None:
        query = query.where(audit_events.c.patient_key == patient_key)
    if principal_id is not None:
        query = query.where(audit_events.c.principal_id == principal_id)
    if org_id is not None:
        query = query.where(audit_events.c.org_id == org_id)
    if since is not None:
        query = query.where(audit_events.c.recorded_at >= since)
    if until is not None:
        query = query.where(audit_events.c.recorded_at < until)
    if outcome is not None:
        query = query.where(audit_events.c.outcome == int(outcome))
    if category is not None:
        query = query.where(audit_events.c.category == str(category))
    if purpose is not None:
        query = query.where(audit_events.c.purpose == str(purpose))
    with db.read() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def patient_access_report(
    db: Database,
    patient_key: str,
    since: datetime | None = None,
    *,
    limit: int = 10_000,
    org_id: str | None = None,
) -> list[dict[str, Any]]:
    """Who accessed ``patient_key``'s record, when and why; newest first.

    One entry per audit event about the patient, refused attempts included
    (``outcome`` not 0): ``seq``, ``time`` (ISO 8601 UTC), ``principal``
    (``kind/id``), ``principal_kind``, ``principal_id``, ``org_id``,
    ``client_id``, ``address``, ``purpose``, ``category``, ``action``,
    ``outcome``, ``entity``, ``description``, ``flags`` (list) and
    ``break_glass`` (access under an emergency grant).
    """
    if not patient_key:
        raise InvalidInput("A patient key is required.")
    if limit < 1:
        raise InvalidInput("limit must be positive.")
    query = (
        select(audit_events)
        .where(audit_events.c.patient_key == patient_key)
        .order_by(audit_events.c.seq.desc())
        .limit(limit)
    )
    if since is not None:
        query = query.where(audit_events.c.recorded_at >= since)
    if org_id is not None:  # a hospital's security officer: its own organization's accesses
        query = query.where(audit_events.c.org_id == org_id)
    report: list[dict[str, Any]] = []
    with db.read() as conn:
        for row in conn.execute(query).mappings():
            flags = split_flags(row["flags"])
            kind, pid = row["principal_kind"], row["principal_id"]
            report.append(
                {
                    "seq": int(row["seq"]),
                    "time": iso_utc(row["recorded_at"]),
                    "principal": f"{kind}/{pid}" if pid else None,
                    "principal_kind": kind,
                    "principal_id": pid,
                    "org_id": row["org_id"],
                    "client_id": row["client_id"],
                    "address": row["address"],
                    "purpose": row["purpose"],
                    "category": row["category"],
                    "action": row["action"],
                    "outcome": int(row["outcome"]),
                    "entity": row["entity"],
                    "description": row["description"],
                    "flags": sorted(flags),
                    "break_glass": AuditFlag.BREAK_GLASS.value in flags
                    or row["purpose"] == Purpose.EMERGENCY.value,
                }
            )
    return report
