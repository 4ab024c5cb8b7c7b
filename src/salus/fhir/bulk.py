"""FHIR Bulk Data export, free of HTTP (Bulk Data Access IG v2,
https://hl7.org/fhir/uv/bulkdata/export.html).

Kick-off levels (IG §"Endpoint - System Level Export", "- All Patients", "- Group
of Patients"): what the caller may search; what lies in a patient compartment
(``patient_key`` set, Patients included); the compartments of the Patients in
``Group.member.entity``. Each type is authorized by the policy engine
(``search``): refused when ``_type`` names it, skipped otherwise.
De-identified principals get de-identified NDJSON (:mod:`salus.fhir.deidview`).

A job (:data:`EXPORT_JOB`) does the work: it rebuilds the principal from its
payload, decides again, pages through current, non-deleted resources per type
under the caller's filter in the SQL (last updated after ``_since`` and not
after ``transactionTime``) and writes NDJSON into the encrypted blob store.
State and manifest live in ``bulk_exports``; stored errors come from
:func:`~salus.jobs.queue.describe_error` and carry no patient data.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.engine import RowMapping

from salus import jsoncodec
from salus.audit.events import AuditEvent
from salus.db.tables import bulk_exports, fhir_resources
from salus.db.types import utcnow
from salus.errors import Forbidden, NotFound, RateLimited, SalusError, Unavailable
from salus.fhir.deidview import Pseudonymizer, deidentify
from salus.fhir.search.resource_types import RESOURCE_TYPES
from salus.fhir.store import RESOURCE_COLUMNS
from salus.jobs import JobContext, JobStatus
from salus.jobs.queue import describe_error
from salus.security.policy import AccessRequest, Decision, Interaction, RecordFilter
from salus.security.principal import AuthMethod, Principal, PrincipalKind, Purpose

if TYPE_CHECKING:
    from salus.services import Services

__all__ = [
    "ACTIVE",
    "EXPORT_JOB",
    "NDJSON",
    "Export",
    "ExportLevel",
    "ExportRequest",
    "ExportState",
    "BulkExporter",
    "OutputFile",
    "principal_from_payload",
    "principal_payload",
    "register_bulk_jobs",
]

#: The job kind that runs an export.
EXPORT_JOB = "fhir.export"
#: The one output format (IG §"Query Parameters": ``_outputFormat``).
NDJSON = "application/fhir+ndjson"
#: Resources read per query (each page is one read transaction).
PAGE_SIZE = 1000
#: Resources per output file; a type with more is split over several files.
FILE_RESOURCES = 100_000
#: Group members per query (``patient_key IN (...)``).
MEMBER_CHUNK = 500
#: Exports a principal may have accepted or in progress at once (IG: 429).
MAX_ACTIVE = 5

R = fhir_resources


class ExportLevel(StrEnum):
    SYSTEM = "system"
    PATIENT = "patient"
    GROUP = "group"


class ExportState(StrEnum):
    ACCEPTED = "accepted"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (ExportState.ACCEPTED.value, ExportState.IN_PROGRESS.value)


class _Cancelled(Exception):
    """Raised inside the NDJSON stream when the export was cancelled meanwhile."""


@dataclass(frozen=True, slots=True)
class ExportRequest:
    """What the kick-off asked for (IG §"Query Parameters")."""

    level: ExportLevel
    #: The types ``_type`` names (None: every type the caller may search).
    types: tuple[str, ...] | None = None
    since: datetime | None = None
    group_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "level": self.level.value,
            "types": list(self.types) if self.types is not None else None,
            "since": self.since.isoformat() if self.since is not None else None,
            "group": self.group_id,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExportRequest:
        types = data.get("types")
        since = data.get("since")
        return cls(
            ExportLevel(data["level"]),
            tuple(types) if types is not None else None,
            datetime.fromisoformat(since) if since else None,
            data.get("group"),
        )


@dataclass(frozen=True, slots=True)
class OutputFile:
    """One NDJSON file of the manifest: a blob of one resource type."""

    type: str
    digest: str
    size: int
    count: int


@dataclass(frozen=True, slots=True)
class Export:
    """A ``bulk_exports`` row."""

    id: str
    owner_kind: str
    owner_id: str
    owner_org: str
    status: ExportState
    level: ExportLevel
    request_url: str
    params: dict[str, Any]
    job_id: int | None
    progress: str | None
    transaction_time: datetime | None
    error: str | None
    manifest: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: RowMapping) -> Export:
        values = dict(row)
        values["status"] = ExportState(values["status"])
        values["level"] = ExportLevel(values["level"])
        return cls(**values)

    def owned_by(self, principal: Principal) -> bool:
        """The principal that started it; a SYSTEM principal sees every export."""
        if principal.kind is PrincipalKind.SYSTEM:
            return True
        return self.owner_kind == principal.kind.value and self.owner_id == principal.id

    def files(self) -> list[OutputFile]:
        return [OutputFile(**item) for item in (self.manifest or {}).get("files", [])]


def principal_payload(principal: Principal) -> dict[str, Any]:
    """What the job needs to act as ``principal`` (no token, no address)."""
    return {
        "kind": principal.kind.value,
        "id": principal.id,
        "org": principal.org_id,
        "roles": sorted(principal.roles),
        "scopes": sorted(principal.scopes),
        "auth": principal.auth_method.value,
        "client": principal.client_id,
    }


def principal_from_payload(data: Mapping[str, Any]) -> Principal:
    return Principal(
        kind=PrincipalKind(data["kind"]),
        id=str(data["id"]),
        org_id=str(data["org"]),
        roles=frozenset(data.get("roles") or ()),
        scopes=frozenset(data.get("scopes") or ()),
        auth_method=AuthMethod(data.get("auth") or AuthMethod.LOCAL.value),
        client_id=data.get("client"),
    )


def group_members(group: Mapping[str, Any]) -> list[str]:
    """Ids of the Patients a Group names (``Group.member.entity``), active members only."""
    found: dict[str, None] = {}
    for member in group.get("member") or []:
        if not isinstance(member, Mapping) or member.get("inactive") is True:
            continue
        entity = member.get("entity")
        reference = entity.get("reference") if isinstance(entity, Mapping) else None
        if not isinstance(reference, str):
            continue
        parts = reference.split("/_history/")[0].split("/")
        if len(parts) >= 2 and parts[-2] == "Patient" and parts[-1]:
            found[parts[-1]] = None
    return sorted(found)


def ndjson(resources: Iterable[Mapping[str, Any]], pseudonymizer: Pseudonymizer | None) -> bytes:
    """NDJSON lines (IG §"Bulk Data Output File Request"), de-identified with a pseudonymizer."""
    return b"".join(
        jsoncodec.dumps(deidentify(r, pseudonymizer) if pseudonymizer else r) + b"\n"
        for r in resources
    )


def _instant(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _permanent(exc: BaseException) -> bool:
    return isinstance(exc, SalusError) and not exc.retryable and exc.http_status < 500


@dataclass(slots=True)
class _Scope:
    """What one run exports: filter, time window, compartments."""

    export_id: str
    ctx: JobContext
    request: ExportRequest
    transaction_time: datetime
    members: list[list[str]] | None = None
    exported: int = 0
    progress: str = ""


class BulkExporter:
    """Kick-off, status, cancellation, files, and the job that does the export."""

    def __init__(
        self,
        services: Services,
        *,
        page_size: int = PAGE_SIZE,
        file_resources: int = FILE_RESOURCES,
        max_active: int = MAX_ACTIVE,
    ) -> None:
        self.services = services
        self.page_size = page_size
        self.file_resources = file_resources
        self.max_active = max_active

    # -- decisions ---------------------------------------------------------------------
    def plan(
        self, principal: Principal, purpose: Purpose | None, named: Sequence[str] | None
    ) -> list[tuple[str, Decision]]:
        """The types to export with their decisions (IG §"Query Parameters": ``_type``).

        A named type the caller may not search is refused (403); an unnamed
        one is skipped. Refused when nothing at all is left.
        """
        plan: list[tuple[str, Decision]] = []
        for res_type in named if named is not None else RESOURCE_TYPES:
            request = AccessRequest(res_type, Interaction.SEARCH, purpose)
            decision = self.services.policy.decide(principal, request)
            if decision.allowed and decision.filter is not None:
                plan.append((res_type, decision))
            elif named is not None:
                raise Forbidden(f"You may not export {res_type} resources: {decision.reason}")
        if not plan:
            raise Forbidden("You may not export any resource type.")
        if plan[0][1].deidentify and self.services.fhir_router.pseudonymizer is None:
            raise Forbidden("De-identified access is not configured.")
        return plan

    def _group(
        self, principal: Principal, purpose: Purpose | None, group_id: str
    ) -> dict[str, Any]:
        """The Group, read through the store under the caller's filter (404 if not visible)."""
        decision = self.services.policy.authorize(
            principal, AccessRequest("Group", Interaction.READ, purpose)
        )
        with self.services.db.read() as conn:
            stored = self.services.fhir_store.read(conn, decision.require(), "Group", group_id)
        return stored.resource or {}

    # -- kick-off (IG §"Bulk Data Kick-off Request") ----------------------------------
    def kick_off(
        self,
        principal: Principal,
        purpose: Purpose | None,
        request: ExportRequest,
        request_url: str,
    ) -> Export:
        plan = self.plan(principal, purpose, request.types)
        if request.level is ExportLevel.GROUP:
            assert request.group_id is not None  # noqa: S101 - set for group exports
            self._group(principal, purpose, request.group_id)
        decision = plan[0][1]
        export_id = str(uuid.uuid4())
        now = utcnow()
        params = {**request.to_json(), "purpose": decision.purpose.value}
        params["deidentify"] = decision.deidentify
        with self.services.db.write() as conn:
            active = conn.execute(
                select(func.count())
                .select_from(bulk_exports)
                .where(
                    bulk_exports.c.owner_kind == principal.kind.value,
                    bulk_exports.c.owner_id == principal.id,
                    bulk_exports.c.status.in_(ACTIVE),
                )
            ).scalar_one()
            if int(active) >= self.max_active:
                raise RateLimited("Too many exports in progress.", headers={"Retry-After": "60"})
            job_id = self.services.jobs.enqueue(
                EXPORT_JOB,
                {
                    "export": export_id,
                    "principal": principal_payload(principal),
                    "purpose": decision.purpose.value,
                },
                conn=conn,
                tenant=principal.org_id,
            )
            conn.execute(
                insert(bulk_exports).values(
                    id=export_id,
                    owner_kind=principal.kind.value,
                    owner_id=principal.id,
                    owner_org=principal.org_id,
                    status=ExportState.ACCEPTED.value,
                    level=request.level.value,
                    request_url=request_url,
                    params=params,
                    job_id=job_id,
                    progress="accepted",
                    created_at=now,
                    updated_at=now,
                )
            )
        return self.get(export_id)

    # -- status, cancellation, files (IG §"Bulk Data Status Request") ------------------
    def get(self, export_id: str) -> Export:
        with self.services.db.read() as conn:
            query = select(bulk_exports).where(bulk_exports.c.id == export_id)
            row = conn.execute(query).mappings().first()
        if row is None:
            raise NotFound("No such export.")
        return Export.from_row(row)

    def owned(self, principal: Principal, export_id: str) -> Export:
        """The export if ``principal`` may see it; 404 otherwise (and once cancelled)."""
        if len(export_id) > 36:
            raise NotFound("No such export.")
        export = self.get(export_id)
        if not export.owned_by(principal) or export.status is ExportState.CANCELLED:
            raise NotFound("No such export.")
        if export.status.value in ACTIVE and export.job_id is not None:
            export = self._notice_lost_job(export)
        return export

    def _notice_lost_job(self, export: Export) -> Export:
        """A job that died unnoticed (lost worker) or vanished fails the export."""
        assert export.job_id is not None  # noqa: S101 - checked by the caller
        try:
            job = self.services.jobs.get(export.job_id)
            error = (job.last_error or "job-dead") if job.status is JobStatus.DEAD else None
        except NotFound:
            error = "job-missing: the export job no longer exists"
        if error is None:
            return export
        self._set_state(export.id, ExportState.FAILED, error=error)
        return self.get(export.id)

    def cancel(self, principal: Principal, export_id: str) -> Export:
        """IG §"Bulk Data Delete Request": later status requests answer 404."""
        export = self.owned(principal, export_id)
        self._set_state(export.id, ExportState.CANCELLED, only_from=None)
        return self.get(export.id)

    def file(self, principal: Principal, export_id: str, index: int) -> tuple[Export, OutputFile]:
        """IG §"File Request": an output file of a completed export of this principal."""
        export = self.owned(principal, export_id)
        files = export.files()
        if export.status is not ExportState.COMPLETED or not 0 <= index < len(files):
            raise NotFound("No such export file.")
        return export, files[index]

    def _set_state(
        self,
        export_id: str,
        state: ExportState,
        *,
        only_from: Sequence[str] | None = ACTIVE,
        **values: Any,
    ) -> bool:
        statement = update(bulk_exports).where(bulk_exports.c.id == export_id)
        if only_from is not None:
            statement = statement.where(bulk_exports.c.status.in_(list(only_from)))
        values.setdefault("progress", "starting" if state is ExportState.IN_PROGRESS else None)
        with self.services.db.write() as conn:
            result = conn.execute(
                statement.values(status=state.value, updated_at=utcnow(), **values)
            )
        return bool(result.rowcount == 1)

    # -- the job (IG §"Bulk Data Output File Request") ---------------------------------
    def run(self, ctx: JobContext) -> None:
        """The job handler: export, record the manifest, or mark the export failed."""
        export_id = str(ctx.payload["export"])
        principal = principal_from_payload(ctx.payload["principal"])
        purpose = Purpose(ctx.payload["purpose"]) if ctx.payload.get("purpose") else None
        tx = utcnow()
        if not self._set_state(export_id, ExportState.IN_PROGRESS, transaction_time=tx):
            return  # cancelled, or already finished by an earlier attempt
        export = self.get(export_id)
        scope = _Scope(export_id, ctx, ExportRequest.from_json(export.params), tx)
        try:
            files, deidentified = self._export(scope, principal, purpose)
        except _Cancelled:
            return
        except Exception as exc:
            if _permanent(exc) or ctx.job.attempts >= ctx.job.max_attempts:
                self._set_state(export_id, ExportState.FAILED, error=describe_error(exc)[:2000])
            raise
        manifest = {"transactionTime": _instant(tx), "files": [asdict(f) for f in files]}
        if self._set_state(export_id, ExportState.COMPLETED, manifest=manifest):
            self.services.audit.record(
                [
                    AuditEvent.for_principal(
                        principal,
                        category="export",
                        action="E",
                        entity=f"$export/{export_id}",
                        purpose=purpose,
                        description="bulk export completed",
                        flags="deidentified" if deidentified else None,
                        detail={
                            "export": export_id,
                            "level": scope.request.level.value,
                            "files": len(files),
                            "resources": sum(f.count for f in files),
                        },
                    )
                ]
            )

    def _export(
        self, scope: _Scope, principal: Principal, purpose: Purpose | None
    ) -> tuple[list[OutputFile], bool]:
        request = scope.request
        plan = self.plan(principal, purpose, request.types)  # decided again, at run time
        if request.level is ExportLevel.GROUP:
            assert request.group_id is not None  # noqa: S101 - set for group exports
            members = group_members(self._group(principal, purpose, request.group_id))
            scope.members = [
                members[i : i + MEMBER_CHUNK] for i in range(0, len(members), MEMBER_CHUNK)
            ]
        files: list[OutputFile] = []
        for number, (res_type, decision) in enumerate(plan, start=1):
            scope.progress = f"type {number} of {len(plan)} ({res_type})"
            files.extend(self._export_type(scope, res_type, decision))
        return files, plan[0][1].deidentify

    def _export_type(self, scope: _Scope, res_type: str, decision: Decision) -> list[OutputFile]:
        """One type's NDJSON files; a file is closed at the first page boundary at or
        past ``file_resources`` (IG: servers may split a type over several files)."""
        pseudonymizer = self.services.fhir_router.pseudonymizer if decision.deidentify else None
        pages = self._pages(scope, res_type, decision.require())
        files: list[OutputFile] = []
        page = next(pages, None)
        while page is not None:
            counted = [0]

            def lines(first: list[dict[str, Any]], counted: list[int] = counted) -> Iterator[bytes]:
                current: list[dict[str, Any]] | None = first
                while current is not None:
                    yield ndjson(current, pseudonymizer)
                    counted[0] += len(current)
                    scope.exported += len(current)
                    if counted[0] >= self.file_resources:
                        return
                    current = next(pages, None)

            ref = self.services.blobs.put(lines(page))
            files.append(OutputFile(res_type, ref.digest, ref.size, counted[0]))
            page = next(pages, None)
        return files

    def _pages(
        self, scope: _Scope, res_type: str, flt: RecordFilter
    ) -> Iterator[list[dict[str, Any]]]:
        """Non-empty pages of ``res_type``, keyset-paged on (last_updated, rid)."""
        if scope.members is not None and not scope.members:
            return  # a Group without Patient members
        chunks: list[list[str] | None] = [*scope.members] if scope.members else [None]
        for members in chunks:
            after: tuple[datetime, int] | None = None
            while True:
                keys, resources = self._query(scope, res_type, flt, members, after)
                if resources:
                    self._checkpoint(scope)  # only pages with data: empty types stay cheap
                    yield resources
                if len(keys) < self.page_size:
                    break
                after = keys[-1]

    def _query(
        self,
        scope: _Scope,
        res_type: str,
        flt: RecordFilter,
        members: list[str] | None,
        after: tuple[datetime, int] | None,
    ) -> tuple[list[tuple[datetime, int]], list[dict[str, Any]]]:
        """One page under the caller's filter, in the SQL; a body changed since is left out."""
        request = scope.request
        conditions: list[Any] = [
            R.c.res_type == res_type,
            R.c.deleted.is_(False),
            R.c.last_updated <= scope.transaction_time,
            flt.where(RESOURCE_COLUMNS),
        ]
        if request.since is not None:
            conditions.append(R.c.last_updated > request.since)
        if request.level is not ExportLevel.SYSTEM:
            conditions.append(R.c.patient_key.is_not(None))
        if members is not None:
            conditions.append(R.c.patient_key.in_(members))
        if after is not None:
            later = and_(R.c.last_updated == after[0], R.c.rid > after[1])
            conditions.append(or_(R.c.last_updated > after[0], later))
        query = (
            select(R.c.rid, R.c.last_updated)
            .where(*conditions)
            .order_by(R.c.last_updated, R.c.rid)
            .limit(self.page_size)
        )
        with self.services.db.read() as conn:
            keys = [(row.last_updated, int(row.rid)) for row in conn.execute(query, flt.params())]
            stored = self.services.fhir_store.by_rids(conn, [rid for _, rid in keys])
        resources = [
            found.resource
            for found in (stored.get(rid) for _, rid in keys)
            if found is not None
            and found.resource is not None
            and not found.deleted
            and found.last_updated <= scope.transaction_time
        ]
        return keys, resources

    def _checkpoint(self, scope: _Scope) -> None:
        """Between pages: keep the lease, publish progress, stop when cancelled."""
        if not scope.ctx.heartbeat():
            raise Unavailable("The export job lost its lease to another worker.")
        progress = f"{scope.exported} resources; {scope.progress}"[:200]
        with self.services.db.write() as conn:
            result = conn.execute(
                update(bulk_exports)
                .where(
                    bulk_exports.c.id == scope.export_id,
                    bulk_exports.c.status == ExportState.IN_PROGRESS.value,
                )
                .values(progress=progress, updated_at=utcnow())
            )
        if result.rowcount != 1:
            raise _Cancelled()


def register_bulk_jobs(services: Services, exporter: BulkExporter | None = None) -> None:
    """Register the export job handler (kind :data:`EXPORT_JOB`) with ``services``,
    the bulk import job (:mod:`salus.fhir.importjob`) and the profile registry
    (:mod:`salus.fhir.profile_registry`)."""
    services.job_handlers.register(EXPORT_JOB, (exporter or BulkExporter(services)).run)
    from salus.fhir.importjob import register_import_jobs
    from salus.fhir.profile_registry import install_profiles

    register_import_jobs(services)
    install_profiles(services)  # $validate with a profile, meta.profile enforcement
