"""Accepting a submission: validate everything, then write it in one transaction.

The order of work (so that a refused submission leaves nothing behind):

1. read and validate every row (:mod:`.validate`), with no database access;
2. in one write transaction: for an ``append`` dataset, refuse keys already
   stored for the period; for a ``replace`` dataset, delete the
   organization's rows of the period; insert the new rows; write the FHIR
   resources they map to through :class:`~salus.fhir.store.FhirStore`
   (``update`` with the derived id: create or new version; validated,
   indexed and audited in the same transaction) and delete the resources only
   the replaced rows referred to; record the submission and audit it.

Any issue raises :class:`SubmissionRejected` (422) carrying the report; the
transaction is rolled back, so the warehouse is unchanged.

Who may submit: ``hospital_integration``, ``data_steward`` and
``administrator`` holders of a hospital organization, for their own
organization only (the ``org`` column must be theirs), and the host's SYSTEM
principal (``salus submit --org``). The submission history is visible to the
submitting organization; the health authority (``authority_analyst``) and
SYSTEM see every organization's history, which holds counts only.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select

from salus.audit.events import AuditEvent, AuditOutcome
from salus.db.tables_warehouse import dataset_rows, dataset_submissions
from salus.errors import Forbidden, PayloadTooLarge, UnprocessableContent
from salus.security.principal import Principal, PrincipalKind
from salus.warehouse.datasets.definitions import schema_named
from salus.warehouse.datasets.mapping import map_row
from salus.warehouse.datasets.schema import DatasetSchema
from salus.warehouse.datasets.validate import Report, parse_rows, validate_rows

if TYPE_CHECKING:
    from salus.services import Services

__all__ = [
    "SUBMIT_ROLES",
    "Datasets",
    "SubmissionRejected",
    "SubmissionSummary",
    "may_read_all",
    "may_submit",
]

SUBMIT_ROLES = frozenset({"hospital_integration", "data_steward", "administrator"})
#: Issues of a refused submission kept in its audit event (the inbox shows them).
REPORTED_ISSUES = 200
Progress = Callable[[int, int], None]


class SubmissionRejected(UnprocessableContent):
    """A submission with errors: nothing was written; ``report`` says where."""

    code = "submission-rejected"

    def __init__(self, dataset: str, report: Report) -> None:
        super().__init__(
            f"The {dataset} submission was refused: {len(report.issues)} error(s); "
            "nothing was loaded."
        )
        self.dataset = dataset
        self.report = report

    def body(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "status": "rejected", **self.report.to_json()}


@dataclass(frozen=True, slots=True)
class SubmissionSummary:
    id: str
    dataset: str
    schema_version: str
    org_id: str
    period: str
    mode: str
    rows: int
    replaced: int
    resources: int
    digest: str
    submitted_by: str
    submitted_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "dataset": self.dataset,
            "schemaVersion": self.schema_version,
            "org": self.org_id,
            "period": self.period,
            "mode": self.mode,
            "rows": self.rows,
            "replaced": self.replaced,
            "resources": self.resources,
            "sha256": self.digest,
            "submittedBy": self.submitted_by,
            "submittedAt": self.submitted_at.isoformat(),
        }


def may_submit(principal: Principal) -> bool:
    if principal.kind is PrincipalKind.SYSTEM:
        return True
    return bool(SUBMIT_ROLES & principal.roles)


def may_read_all(principal: Principal) -> bool:
    return principal.kind is PrincipalKind.SYSTEM or "authority_analyst" in principal.roles


class Datasets:
    """The operational datasets of one Salus process (``services.warehouse.datasets``)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    @property
    def max_bytes(self) -> int:
        return self.services.settings.warehouse_dataset_max_bytes

    @property
    def max_rows(self) -> int:
        return self.services.settings.warehouse_dataset_max_rows

    def _refuse(self, principal: Principal, schema: DatasetSchema, report: Report) -> None:
        self.services.audit.record(
            [
                AuditEvent.for_principal(
                    principal,
                    category="rest",
                    action="C",
                    outcome=AuditOutcome.MINOR,
                    entity=f"dataset/{schema.name}",
                    description="dataset submission refused",
                    detail={
                        "errors": len(report.issues),
                        "version": schema.version,
                        # the report (row, column, code, message; no cell values) for the
                        # console's integration inbox, first REPORTED_ISSUES issues
                        "issues": [
                            [i.row, i.column, i.code, i.message]
                            for i in report.issues[:REPORTED_ISSUES]
                        ],
                        "truncated": report.truncated or len(report.issues) > REPORTED_ISSUES,
                    },
                )
            ]
        )
        raise SubmissionRejected(schema.name, report)

    def submit(
        self,
        principal: Principal,
        name: str,
        data: bytes,
        *,
        media: str = "auto",
        period: str | None = None,
        progress: Progress | None = None,
        today: date | None = None,
    ) -> SubmissionSummary:
        """Validate and load one submission (see the module doc)."""
        schema = schema_named(name)
        if not may_submit(principal):
            raise Forbidden("Only a hospital's integration, data steward or administrator submits.")
        if self.services.org_kinds.kind(principal.org_id) != "hospital":
            raise Forbidden("Only hospitals submit operational datasets.")
        if len(data) > self.max_bytes:
            raise PayloadTooLarge(f"A submission is at most {self.max_bytes} bytes.")
        report = Report()
        columns, raw_rows, decimal_comma = parse_rows(data, media, report, max_rows=self.max_rows)
        if not columns:  # nothing readable: the report says why
            if not report:
                report.add(0, None, "empty", "The submission has no rows.")
            self._refuse(principal, schema, report)
        submission = validate_rows(
            schema,
            columns,
            raw_rows,
            report,
            org=principal.org_id,
            period=period,
            today=today or self.services.fhir_store.clock().date(),
            decimal_comma=decimal_comma,
        )
        if report:
            self._refuse(principal, schema, report)
        mapped = [map_row(schema.name, principal.org_id, row) for row in submission.rows]
        digest = hashlib.sha256(data).hexdigest()
        try:
            return self._load(principal, schema, submission.period, submission.rows, mapped,
                              digest, progress)  # fmt: skip
        except _AlreadyStored as exc:
            self._refuse(principal, schema, exc.report)
            raise  # pragma: no cover - _refuse raises

    def _load(
        self,
        principal: Principal,
        schema: DatasetSchema,
        period: str,
        rows: list[dict[str, Any]],
        mapped: list[list[dict[str, Any]]],
        digest: str,
        progress: Progress | None,
    ) -> SubmissionSummary:
        store = self.services.fhir_store
        org = principal.org_id
        keys = [_row_key(schema, row) for row in rows]
        submission_id = str(uuid.uuid4())
        personal = {c.name for c in schema.columns if c.personal}
        now = store.clock()
        scope = (
            (dataset_rows.c.dataset == schema.name)
            & (dataset_rows.c.org_id == org)
            & (dataset_rows.c.period == period)
        )
        with self.services.db.write() as conn:
            existing = conn.execute(
                select(dataset_rows.c.row_key, dataset_rows.c.resource_ids).where(scope)
            ).all()
            replaced = 0
            stale: set[str] = set()
            if schema.mode == "append":
                taken = {str(r.row_key) for r in existing}
                report = Report()
                for number, key in enumerate(keys, start=1):
                    if key in taken:
                        report.add(
                            number,
                            ",".join(schema.key),
                            "already-submitted",
                            f"This key was already submitted for {period}.",
                        )
                if report:
                    raise _AlreadyStored(report)
            else:
                replaced = len(existing)
                for r in existing:
                    stale.update(r.resource_ids or [])
                conn.execute(delete(dataset_rows).where(scope))
            written = 0
            new_rows = []
            for position, (row, key, resources) in enumerate(
                zip(rows, keys, mapped, strict=True), start=1
            ):
                refs = []
                for resource in resources:
                    store.update(
                        conn, principal, resource["resourceType"], resource["id"], resource
                    )
                    refs.append(f"{resource['resourceType']}/{resource['id']}")
                    written += 1
                new_rows.append(
                    {
                        "submission_id": submission_id,
                        "dataset": schema.name,
                        "org_id": org,
                        "period": period,
                        "row_key": key,
                        "data": {k: v for k, v in row.items() if k not in personal},
                        "resource_ids": refs,
                    }
                )
                if progress is not None:
                    progress(position, len(rows))
            if new_rows:
                conn.execute(insert(dataset_rows), new_rows)
            stale -= {ref for r in new_rows for ref in r["resource_ids"]}
            if stale:
                still = conn.execute(
                    select(dataset_rows.c.resource_ids).where(
                        (dataset_rows.c.dataset == schema.name) & (dataset_rows.c.org_id == org)
                    )
                ).scalars()
                for refs in still:
                    stale.difference_update(refs or [])
                for ref in sorted(stale):
                    res_type, res_id = ref.split("/", 1)
                    store.delete(conn, principal, res_type, res_id)
            summary = SubmissionSummary(
                id=submission_id,
                dataset=schema.name,
                schema_version=schema.version,
                org_id=org,
                period=period,
                mode=schema.mode,
                rows=len(rows),
                replaced=replaced,
                resources=written,
                digest=digest,
                submitted_by=principal.label[:120],
                submitted_at=now,
            )
            conn.execute(
                insert(dataset_submissions).values(
                    id=submission_id,
                    dataset=schema.name,
                    schema_version=schema.version,
                    org_id=org,
                    period=period,
                    mode=schema.mode,
                    rows=len(rows),
                    replaced=replaced,
                    resources=written,
                    digest=digest,
                    submitted_by=summary.submitted_by,
                    submitted_at=now,
                )
            )
            self.services.audit.append(
                conn,
                [
                    AuditEvent.for_principal(
                        principal,
                        category="rest",
                        action="C",
                        entity=f"dataset/{schema.name}/{submission_id}",
                        description="dataset submission accepted",
                        detail={
                            "period": period,
                            "rows": len(rows),
                            "replaced": replaced,
                            "resources": written,
                            "version": schema.version,
                        },
                    )
                ],
            )
        return summary

    def history(
        self, principal: Principal, name: str | None = None, *, limit: int = 500
    ) -> list[SubmissionSummary]:
        """Accepted submissions, newest first: the caller's organization's, or all
        for the authority and SYSTEM."""
        if not (may_submit(principal) or may_read_all(principal)):
            raise Forbidden("Submission history is for hospitals and the health authority.")
        query = select(dataset_submissions)
        if name is not None:
            query = query.where(dataset_submissions.c.dataset == schema_named(name).name)
        if not may_read_all(principal):
            query = query.where(dataset_submissions.c.org_id == principal.org_id)
        query = query.order_by(
            dataset_submissions.c.submitted_at.desc(), dataset_submissions.c.id
        ).limit(limit)
        with self.services.db.read() as conn:
            found = conn.execute(query).mappings().all()
        return [
            SubmissionSummary(
                id=r["id"],
                dataset=r["dataset"],
                schema_version=r["schema_version"],
                org_id=r["org_id"],
                period=r["period"],
                mode=r["mode"],
                rows=r["rows"],
                replaced=r["replaced"],
                resources=r["resources"],
                digest=r["digest"],
                submitted_by=r["submitted_by"],
                submitted_at=r["submitted_at"],
            )
            for r in found
        ]

    def rows(
        self, principal: Principal, name: str, period: str | None = None
    ) -> list[dict[str, Any]]:
        """The stored rows of the caller's organization (personal columns are never stored)."""
        schema = schema_named(name)
        if not may_submit(principal):
            raise Forbidden("Rows are for the submitting hospital.")
        query = select(dataset_rows.c.data).where(
            (dataset_rows.c.dataset == schema.name) & (dataset_rows.c.org_id == principal.org_id)
        )
        if period is not None:
            query = query.where(dataset_rows.c.period == period)
        with self.services.db.read() as conn:
            return [dict(d) for d in conn.execute(query.order_by(dataset_rows.c.id)).scalars()]


class _AlreadyStored(Exception):
    def __init__(self, report: Report) -> None:
        super().__init__("already stored")
        self.report = report


def _row_key(schema: DatasetSchema, row: dict[str, Any]) -> str:
    return "|".join(str(row.get(k) or "") for k in schema.key)[:300]
