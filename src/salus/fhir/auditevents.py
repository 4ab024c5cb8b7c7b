"""``/fhir/AuditEvent``: the audit trail through the FHIR API (read and search).

AuditEvents are not stored as FHIR resources: they are rows of the
hash-chained audit log (:mod:`salus.audit`), rendered as R4 AuditEvent on the
way out. Search supports the parameters a security review needs (``patient``,
``agent``, ``date`` with ``ge``/``gt``/``le``/``lt``, ``outcome``,
``_count``, ``_offset``); the policy engine decides who may read them
(security officers; network-wide ones see every organization).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select

from salus.audit.fhir import search_events, to_fhir
from salus.db.engine import Database
from salus.db.tables import audit_events
from salus.errors import InvalidInput, NotFound
from salus.fhir.query import date_range
from salus.security.policy import RecordFilter

__all__ = ["read_audit_event", "search_audit_events"]

_SUPPORTED = {"patient", "agent", "date", "outcome", "_count", "_offset", "_format"}


def _date_bounds(values: list[str]) -> tuple[datetime | None, datetime | None]:
    since = until = None
    for value in values:
        prefix, text = (
            (value[:2], value[2:]) if value[:2] in ("ge", "gt", "le", "lt") else ("eq", value)
        )
        low, high = date_range(text)
        if prefix in ("ge", "eq"):
            since = low
        if prefix == "gt":
            since = high
        if prefix in ("le", "eq"):
            until = high
        if prefix == "lt":
            until = low
    return since, until


def search_audit_events(
    db: Database, flt: RecordFilter, params: Sequence[tuple[str, str]], base_url: str
) -> dict[str, Any]:
    unknown = sorted({k for k, _ in params if k not in _SUPPORTED})
    if unknown:
        raise InvalidInput(f"Unsupported AuditEvent search parameter(s): {', '.join(unknown)}.")
    values: dict[str, list[str]] = {}
    for key, value in params:
        values.setdefault(key, []).append(value)

    def last(key: str) -> str | None:
        found = values.get(key)
        return found[-1] if found else None

    patient = last("patient")
    if patient and patient.startswith("Patient/"):
        patient = patient.split("/", 1)[1]
    count = int((values.get("_count") or ["50"])[-1])
    offset = int((values.get("_offset") or ["0"])[-1])
    since, until = _date_bounds(values.get("date", []))
    outcome_raw = last("outcome")
    rows = search_events(
        db,
        patient_key=patient,
        principal_id=last("agent"),
        org_id=None if flt.all_orgs else flt.own_org,
        since=since,
        until=until,
        outcome=int(outcome_raw) if outcome_raw is not None else None,
        limit=max(1, min(count, 1000)),
        offset=offset,
    )
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "self", "url": f"{base_url}/AuditEvent"}],
        "entry": [
            {
                "fullUrl": f"{base_url}/AuditEvent/{row['seq']}",
                "resource": to_fhir(row),
                "search": {"mode": "match"},
            }
            for row in rows
        ],
    }


def read_audit_event(db: Database, flt: RecordFilter, seq: str) -> dict[str, Any]:
    if not seq.isdigit():
        raise NotFound("No such AuditEvent.")
    query = select(audit_events).where(audit_events.c.seq == int(seq))
    if not flt.all_orgs:
        query = query.where(audit_events.c.org_id == flt.own_org)
    with db.read() as conn:
        row = conn.execute(query).mappings().first()
    if row is None:
        raise NotFound("No such AuditEvent.")
    return to_fhir(dict(row))
