"""Operations (FHIR R4 operations.html): ``$validate``, ``$meta`` and
``Patient/$everything``.

``$everything`` returns the patient and every resource in the patient's
compartment that the caller's policy filter lets through: the same filter,
inside the same SQL, as any read.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from salus.db.tables import fhir_resources
from salus.errors import InvalidInput, NotSupported
from salus.fhir.store import RESOURCE_COLUMNS, FhirStore, Stored
from salus.fhir.validate import validate_resource
from salus.security.policy import RecordFilter

__all__ = ["everything", "meta_parameters", "validate_operation"]

R = fhir_resources
_CORE_PROFILE = "http://hl7.org/fhir/StructureDefinition/"
EVERYTHING_LIMIT = 10_000


def _resource_from(body: Mapping[str, Any]) -> dict[str, Any]:
    """The resource to validate: the body, or the ``resource`` parameter of a Parameters."""
    if body.get("resourceType") == "Parameters":
        for parameter in body.get("parameter") or []:
            if isinstance(parameter, Mapping) and parameter.get("name") == "resource":
                resource = parameter.get("resource")
                if isinstance(resource, dict):
                    return resource
        raise InvalidInput("$validate takes a resource or a Parameters with 'resource'.")
    return dict(body)


def validate_operation(
    res_type: str, body: Mapping[str, Any], profile: str | None, mode: str | None
) -> dict[str, Any]:
    """FHIR resource-operation-validate: an OperationOutcome, errors or not (200)."""
    resource = _resource_from(body)
    if resource.get("resourceType") != res_type:
        raise InvalidInput("The resource type does not match the URL.", expression=["resourceType"])
    if profile and profile != f"{_CORE_PROFILE}{res_type}":
        raise NotSupported("Only the base R4 profile of the resource type can be validated.")
    if mode not in (None, "create", "update", "delete"):
        raise InvalidInput("mode is create, update or delete.", expression=["mode"])
    issues = validate_resource(resource, mode="update" if mode == "update" else "any")
    if not issues:
        return {
            "resourceType": "OperationOutcome",
            "issue": [
                {"severity": "information", "code": "informational", "diagnostics": "All OK"}
            ],
        }
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": issue.severity,
                "code": issue.code,
                "diagnostics": issue.message,
                "expression": [issue.expression],
            }
            for issue in issues
        ],
    }


def meta_parameters(stored: Stored) -> dict[str, Any]:
    """FHIR resource-operation-meta (instance level): the resource's meta."""
    meta = dict((stored.resource or {}).get("meta") or {})
    return {"resourceType": "Parameters", "parameter": [{"name": "return", "valueMeta": meta}]}


def everything(
    conn: Connection,
    store: FhirStore,
    flt: RecordFilter,
    patient_id: str,
    *,
    since: datetime | None,
    types: set[str] | None,
    count: int,
    offset: int,
) -> tuple[Stored, list[Stored], int]:
    """The patient (readable by the caller, else NotFound/Gone) and a page of its
    compartment, oldest change first; returns (patient, page, total)."""
    patient = store.read(conn, flt, "Patient", patient_id)
    conditions = [
        R.c.patient_key == patient_id,
        R.c.deleted.is_(False),
        R.c.res_type != "Patient",
        flt.where(RESOURCE_COLUMNS),
    ]
    if since is not None:
        conditions.append(R.c.last_updated >= since)
    if types:
        conditions.append(R.c.res_type.in_(sorted(types)))
    params = flt.params()
    query = select(R.c.rid).where(*conditions)
    rids = [
        int(r)
        for r in conn.execute(
            query.order_by(R.c.res_type, R.c.rid)
            .limit(min(count, EVERYTHING_LIMIT))
            .offset(offset),
            params,
        ).scalars()
    ]
    from sqlalchemy import func

    total = int(
        conn.execute(select(func.count()).select_from(query.subquery()), params).scalar_one()
    )
    found = store.by_rids(conn, rids)
    return patient, [found[r] for r in rids if r in found], total
