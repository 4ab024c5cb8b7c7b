"""Operations (FHIR R4 operations.html): ``$validate`` (with a profile),
``$meta`` and ``Patient/$everything``.

``$everything`` returns the patient and every resource in the patient's
compartment that the caller's policy filter lets through: the same filter,
inside the same SQL, as any read.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from salus.db.tables import fhir_resources
from salus.errors import InvalidInput, NotSupported
from salus.fhir.profile_registry import declared_profiles
from salus.fhir.store import RESOURCE_COLUMNS, FhirStore, Stored
from salus.fhir.validate import validate_resource
from salus.security.policy import RecordFilter

if TYPE_CHECKING:
    from salus.fhir.profile_registry import ProfileRegistry

__all__ = ["everything", "meta_parameters", "validate_operation"]

R = fhir_resources
_CORE_PROFILE = "http://hl7.org/fhir/StructureDefinition/"
EVERYTHING_LIMIT = 10_000


def _parameter(body: Mapping[str, Any], name: str) -> Any:
    """The first ``Parameters.parameter`` named ``name`` (None if absent)."""
    for parameter in body.get("parameter") or []:
        if isinstance(parameter, Mapping) and parameter.get("name") == name:
            return parameter
    return None


def _resource_from(body: Mapping[str, Any]) -> dict[str, Any]:
    """The resource to validate: the body, or the ``resource`` parameter of a Parameters."""
    if body.get("resourceType") == "Parameters":
        parameter = _parameter(body, "resource")
        resource = parameter.get("resource") if parameter is not None else None
        if isinstance(resource, dict):
            return resource
        raise InvalidInput("$validate takes a resource or a Parameters with 'resource'.")
    return dict(body)


def _profile_from(body: Mapping[str, Any]) -> str | None:
    """``profile`` of a Parameters body (valueUri, valueCanonical or valueString)."""
    if body.get("resourceType") != "Parameters":
        return None
    parameter = _parameter(body, "profile")
    if parameter is None:
        return None
    for key in ("valueCanonical", "valueUri", "valueString", "valueUrl"):
        if isinstance(parameter.get(key), str):
            return str(parameter[key])
    raise InvalidInput("The profile parameter must be a canonical URL.", expression=["profile"])


def _issue(severity: str, code: str, message: str, expression: str) -> dict[str, Any]:
    return {
        "severity": severity,
        "code": code,
        "diagnostics": message,
        "expression": [expression],
    }


def validate_operation(
    res_type: str,
    body: Mapping[str, Any],
    profile: str | None,
    mode: str | None,
    profiles: ProfileRegistry | None = None,
) -> dict[str, Any]:
    """FHIR resource-operation-validate: an OperationOutcome, errors or not (200).

    Checks the R4 structure, then the profile named by ``profile`` (query or
    Parameters) and the known profiles ``meta.profile`` declares, found among
    the StructureDefinitions stored on the server (:mod:`salus.fhir.profiles`).
    A named profile the server does not know is an error issue; an unknown
    declared one a warning.
    """
    resource = _resource_from(body)
    profile = profile or _profile_from(body)
    if resource.get("resourceType") != res_type:
        raise InvalidInput("The resource type does not match the URL.", expression=["resourceType"])
    if mode not in (None, "create", "update", "delete"):
        raise InvalidInput("mode is create, update or delete.", expression=["mode"])
    if profile == f"{_CORE_PROFILE}{res_type}":
        profile = None
    if profile and profiles is None:
        raise NotSupported("Only the base R4 profile of the resource type can be validated.")
    issues = [
        _issue(issue.severity, issue.code, issue.message, issue.expression)
        for issue in validate_resource(resource, mode="update" if mode == "update" else "any")
    ]
    if profiles is not None:
        named = [profile] if profile else []
        for canonical in named + [p for p in declared_profiles(resource) if p not in named]:
            found = profiles.validate(resource, canonical)
            if found is None:
                explicit = canonical in named
                where = "profile" if explicit else f"{res_type}.meta.profile"
                message = "The profile is not known to this server" + (
                    "" if explicit else "; it was not checked"
                )
                issues.append(
                    _issue("error" if explicit else "warning", "not-found", message, where)
                )
                continue
            issues.extend(_issue(i.severity, i.code, i.message, i.expression) for i in found)
    if not any(issue["severity"] in ("error", "fatal", "warning") for issue in issues):
        issues.insert(
            0, {"severity": "information", "code": "informational", "diagnostics": "All OK"}
        )
    return {"resourceType": "OperationOutcome", "issue": issues}


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
