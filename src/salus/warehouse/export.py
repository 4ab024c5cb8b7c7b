"""``ViewDefinition/$export``, free of HTTP (SQL-on-FHIR v2 §"Operations: $export").

The asynchronous request pattern of Bulk Data (and of :mod:`salus.fhir.bulk`,
whose principal payload and job queue this reuses): the kick-off checks the
views and the caller's access, stores a ``view_exports`` row and enqueues a
job; the job rebuilds the principal, decides again, applies each view to
the store as :func:`~salus.warehouse.run.view_batches` does for ``$run``
(same policy, same de-identification) and writes one file per view, in the
requested format, into the encrypted blob store. Status and files are
visible to the principal that asked (and SYSTEM) only.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select, update

from salus.audit.events import AuditEvent
from salus.db.tables_warehouse import view_exports
from salus.db.types import utcnow
from salus.errors import NotFound, SalusError
from salus.fhir.bulk import principal_from_payload, principal_payload
from salus.jobs import JobContext
from salus.jobs.queue import describe_error
from salus.security.policy import AccessRequest, Interaction
from salus.security.principal import Principal, PrincipalKind, Purpose
from salus.warehouse.catalog import compile_definition
from salus.warehouse.run import RunRequest, render, view_batches

if TYPE_CHECKING:
    from salus.services import Services

__all__ = ["EXPORT_JOB", "ViewExport", "ViewExporter", "register_export_job"]

EXPORT_JOB = "warehouse.view-export"
ACTIVE = ("accepted", "in-progress")


@dataclass(frozen=True, slots=True)
class ViewExport:
    id: str
    owner_kind: str
    owner_id: str
    status: str
    params: dict[str, Any]
    progress: str | None
    error: str | None
    manifest: dict[str, Any] | None
    created_at: datetime

    def files(self) -> list[dict[str, Any]]:
        return list((self.manifest or {}).get("files", []))


class ViewExporter:
    def __init__(self, services: Services) -> None:
        self.services = services

    def kick_off(
        self,
        principal: Principal,
        purpose: Purpose | None,
        views: Sequence[tuple[str, dict[str, Any]]],
        fmt: str,
        *,
        header: bool = True,
        since: datetime | None = None,
        request_url: str,
    ) -> ViewExport:
        """Check every view (400) and the caller's access to its type (403), then enqueue."""
        for _, definition in views:
            view = compile_definition(definition)
            request = AccessRequest(view.resource, Interaction.SEARCH, purpose)
            self.services.policy.authorize(principal, request)
        export_id = str(uuid.uuid4())
        now = utcnow()
        params = {
            "views": [{"name": name, "definition": d} for name, d in views],
            "format": fmt,
            "header": header,
            "since": since.isoformat() if since else None,
            "purpose": purpose.value if purpose else None,
        }
        with self.services.db.write() as conn:
            job_id = self.services.jobs.enqueue(
                EXPORT_JOB,
                {"export": export_id, "principal": principal_payload(principal)},
                conn=conn,
                tenant=principal.org_id,
            )
            conn.execute(
                insert(view_exports).values(
                    id=export_id,
                    owner_kind=principal.kind.value,
                    owner_id=principal.id,
                    owner_org=principal.org_id,
                    status="accepted",
                    request_url=request_url,
                    params=params,
                    job_id=job_id,
                    progress="accepted",
                    created_at=now,
                    updated_at=now,
                )
            )
        return self.get(export_id)

    def get(self, export_id: str) -> ViewExport:
        with self.services.db.read() as conn:
            row = (
                conn.execute(select(view_exports).where(view_exports.c.id == export_id))
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound("No such export.")
        return ViewExport(
            row["id"],
            row["owner_kind"],
            row["owner_id"],
            row["status"],
            dict(row["params"]),
            row["progress"],
            row["error"],
            row["manifest"],
            row["created_at"],
        )

    def owned(self, principal: Principal, export_id: str) -> ViewExport:
        if len(export_id) > 36:
            raise NotFound("No such export.")
        export = self.get(export_id)
        mine = export.owner_kind == principal.kind.value and export.owner_id == principal.id
        if not (mine or principal.kind is PrincipalKind.SYSTEM) or export.status == "cancelled":
            raise NotFound("No such export.")
        return export

    def cancel(self, principal: Principal, export_id: str) -> None:
        self.owned(principal, export_id)
        self._set(export_id, "cancelled", only_active=False)

    def _set(self, export_id: str, status: str, *, only_active: bool = True, **values: Any) -> bool:
        statement = update(view_exports).where(view_exports.c.id == export_id)
        if only_active:
            statement = statement.where(view_exports.c.status.in_(ACTIVE))
        with self.services.db.write() as conn:
            result = conn.execute(statement.values(status=status, updated_at=utcnow(), **values))
        return bool(result.rowcount == 1)

    def run(self, ctx: JobContext) -> None:
        """The job: one file per view, then the manifest (or the failure)."""
        export_id = str(ctx.payload["export"])
        principal = principal_from_payload(ctx.payload["principal"])
        if not self._set(export_id, "in-progress", progress="starting"):
            return
        export = self.get(export_id)
        params = export.params
        purpose = Purpose(params["purpose"]) if params.get("purpose") else None
        since = datetime.fromisoformat(params["since"]) if params.get("since") else None
        files: list[dict[str, Any]] = []
        try:
            for number, item in enumerate(params["views"], start=1):
                view = compile_definition(item["definition"])
                request = RunRequest(view, since=since)
                access, batches = view_batches(self.services, principal, purpose, request)
                rows = [row for batch in batches for row in batch]
                data = render(
                    view, view.column_names, rows, params["format"], header=params["header"]
                )
                ref = self.services.blobs.put(data)
                name = item["name"] or view.name or f"view{number}"
                files.append(
                    {"name": name, "digest": ref.digest, "size": ref.size, "rows": len(rows)}
                )
                self._set(
                    export_id, "in-progress", progress=f"view {number} of {len(params['views'])}"
                )
                ctx.heartbeat()
        except Exception as exc:
            permanent = isinstance(exc, SalusError) and exc.http_status < 500
            if permanent or ctx.job.attempts >= ctx.job.max_attempts:
                self._set(export_id, "failed", error=describe_error(exc)[:2000])
            if permanent:
                return
            raise
        if self._set(export_id, "completed", manifest={"files": files}, progress=None):
            self.services.audit.record(
                [
                    AuditEvent.for_principal(
                        principal,
                        category="export",
                        action="E",
                        entity=f"ViewDefinition/$export/{export_id}",
                        purpose=purpose,
                        description="view export completed",
                        flags="deidentified" if access.deidentified else None,
                        detail={"files": len(files), "rows": sum(f["rows"] for f in files)},
                    )
                ]
            )


def register_export_job(services: Services) -> None:
    services.job_handlers.register(EXPORT_JOB, ViewExporter(services).run)
