"""The warehouse of one Salus process (``services.warehouse``).

Who may do what (ADR 13):

* **Materialized views** hold de-identified rows of every organization
  (:mod:`.materialize`). Defining views, refreshing them and querying them
  with SQL is open to principals holding a de-identified role
  (``authority_analyst``, ``researcher``: the roles the policy engine never
  shows direct identifiers) and to the SYSTEM principal (the CLI on the
  host, scheduled jobs). Hospitals' clinical roles do not get network-wide
  tables, even de-identified.
* **``$run`` and ``$export``** read the live store as the caller, under the
  policy engine (:mod:`.run`): what the caller may search, de-identified
  when the caller's access is.

Every refresh, query, run and export is audited; SQL text is not stored in
the audit trail (it may hold values), its length and the views named are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from salus.audit.events import AuditEvent
from salus.errors import Forbidden, NotFound
from salus.jobs import JobContext
from salus.security.principal import Principal, PrincipalKind
from salus.security.roles import ROLES
from salus.warehouse.catalog import StoredView, ViewCatalog
from salus.warehouse.materialize import Materializer, MaterializeReport
from salus.warehouse.query import QueryResult, run_sql

if TYPE_CHECKING:
    from salus.services import Services

__all__ = ["MATERIALIZE_JOB", "Warehouse", "may_use_warehouse"]

#: The job kind that refreshes one view (payload: ``view``, ``full``).
MATERIALIZE_JOB = "warehouse.materialize"


def may_use_warehouse(principal: Principal) -> bool:
    """SYSTEM, or a principal holding a de-identified role (see the module doc)."""
    if principal.kind is PrincipalKind.SYSTEM:
        return True
    return any(ROLES[name].deidentified for name in principal.roles if name in ROLES)


class Warehouse:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.catalog = ViewCatalog(services.db)
        self.materializer = Materializer(services, self.catalog)

    def require(self, principal: Principal) -> None:
        if not may_use_warehouse(principal):
            raise Forbidden("Only analysts and researchers use the warehouse's views.")

    def view(self, principal: Principal, key: str) -> StoredView:
        """A stored view by id or name."""
        self.require(principal)
        try:
            return self.catalog.get(key)
        except NotFound:
            return self.catalog.by_name(key)

    def materialize(
        self, principal: Principal, key: str, *, full: bool = False
    ) -> MaterializeReport:
        stored = self.view(principal, key)
        return self.materializer.run(stored, full=full, principal=principal)

    def materialize_all(
        self, principal: Principal, *, full: bool = False
    ) -> list[MaterializeReport]:
        self.require(principal)
        return [
            self.materializer.run(v, full=full, principal=principal) for v in self.catalog.list()
        ]

    def query(self, principal: Principal, sql: str, *, max_rows: int = 100_000) -> QueryResult:
        """One SQL statement over the materialized views (DuckDB, :mod:`.query`)."""
        self.require(principal)
        views = self.catalog.list()
        result = run_sql(self.services.blobs, views, sql, max_rows=max_rows)
        self.services.audit.record(
            [
                AuditEvent.for_principal(
                    principal,
                    category="export",
                    action="E",
                    entity="warehouse/query",
                    description="warehouse SQL query",
                    flags="deidentified",
                    detail={"sqlLength": len(sql), "rows": len(result.rows)},
                )
            ]
        )
        return result

    def job(self, ctx: JobContext) -> None:
        """The handler of :data:`MATERIALIZE_JOB` (scheduled or requested refreshes)."""
        from salus.fhir.bulk import principal_from_payload

        payload: dict[str, Any] = dict(ctx.payload)
        principal = principal_from_payload(payload["principal"])
        self.materialize(principal, str(payload["view"]), full=bool(payload.get("full")))
