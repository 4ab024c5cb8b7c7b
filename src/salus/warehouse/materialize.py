"""Materialized views: a ViewDefinition over the whole FHIR store, as Parquet parts.

A run (:meth:`Materializer.run`) reads the resources of the view's type
changed since the view's watermark (all of them for the first run, after
``--full`` or when the definition changed), de-identifies each one
(:func:`~salus.fhir.deidview.deidentify`: names, contacts, identifiers,
narrative removed, ids and references replaced by keyed pseudonyms that
still join), applies the view and writes the rows as Parquet parts into the
encrypted blob store. Rows carry their resource's ``rid``: rows of a changed
or deleted resource are removed from the older parts that hold them (those
parts are rewritten) before its new rows are appended, so a view always
holds exactly one generation of rows per resource.

The new parts list, the watermark and the row count commit in one update
that only succeeds if no other run committed meanwhile (``generation``).
The watermark never moves past ``now - WATERMARK_LAG``: a write whose
transaction was still open while the run read its page is read again by
the next run (replacing rows is idempotent), so nothing committed is missed.
Patients who refuse public-health use of their records (a deny consent) are
left out, as for any de-identified reader; a consent change takes effect at
the next full run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from sqlalchemy import select, update

from salus.audit.events import AuditEvent
from salus.db.tables_warehouse import warehouse_views
from salus.db.types import utcnow
from salus.errors import ConfigurationError, Conflict
from salus.fhir.deidview import deidentify
from salus.security.policy import RecordFilter
from salus.security.principal import Principal
from salus.warehouse.catalog import StoredView, ViewCatalog
from salus.warehouse.parquet import RID, from_parquet, rows_to_table, to_parquet, without_rids
from salus.warehouse.source import Key, pages

if TYPE_CHECKING:
    from salus.services import Services

__all__ = ["MAX_PARTS", "WATERMARK_LAG", "MaterializeReport", "Materializer", "analytics_filter"]

#: How far behind "now" the watermark stays (longer than any write transaction).
WATERMARK_LAG = timedelta(seconds=30)
#: A view with more parts than this is compacted at the end of a run.
MAX_PARTS = 16


def analytics_filter() -> RecordFilter:
    """What a network-wide, de-identified public-health reader sees (ADR 13)."""
    return RecordFilter(own_org="", all_orgs=True, secondary_use_category="public-health")


@dataclass(frozen=True, slots=True)
class MaterializeReport:
    view: str
    full: bool
    resources: int
    rows_written: int
    rows_total: int
    parts: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "full": self.full,
            "resources": self.resources,
            "rowsWritten": self.rows_written,
            "rowsTotal": self.rows_total,
            "parts": self.parts,
            "seconds": round(self.seconds, 3),
        }


def _part(digest: str, table: pa.Table) -> dict[str, Any]:
    rids = table.column(RID)
    import pyarrow.compute as pc

    bounds = pc.min_max(rids)
    return {
        "digest": digest,
        "rows": table.num_rows,
        "min_rid": int(bounds["min"].as_py()),
        "max_rid": int(bounds["max"].as_py()),
    }


class Materializer:
    def __init__(self, services: Services, catalog: ViewCatalog) -> None:
        self.services = services
        self.catalog = catalog
        self.part_rows = services.settings.warehouse_part_rows
        self.page_size = services.settings.warehouse_page_size
        #: See :data:`WATERMARK_LAG` (tests set it to zero).
        self.lag = WATERMARK_LAG

    def _put(self, table: pa.Table) -> dict[str, Any]:
        ref = self.services.blobs.put(to_parquet(table))
        return _part(ref.digest, table)

    def run(
        self, stored: StoredView, *, full: bool = False, principal: Principal
    ) -> MaterializeReport:
        """Bring ``stored``'s Parquet parts up to date with the store (see the module doc)."""
        started = time.perf_counter()
        pseudonymizer = self.services.fhir_router.pseudonymizer
        if pseudonymizer is None:
            raise ConfigurationError("De-identification is not configured.")
        view = stored.compiled()
        full = full or stored.definition_version != stored.version or stored.manifest is None
        after: Key | None = None
        if not full and stored.watermark_updated is not None:
            after = (stored.watermark_updated, int(stored.watermark_rid or 0))
        now = utcnow()
        cutoff: Key = (now - self.lag, 0)
        changed: set[int] = set()
        rows: list[tuple[Any, ...]] = []
        rids: list[int] = []
        new_parts: list[dict[str, Any]] = []
        last: Key | None = None
        for page in pages(
            self.services.db,
            self.services.fhir_store,
            view.resource,
            analytics_filter(),
            page_size=self.page_size,
            after=after,
            until=now,
            with_deleted=True,
        ):
            for source in page:
                changed.add(source.rid)
                if source.resource is None:
                    continue
                found = view.rows(deidentify(source.resource, pseudonymizer))
                rows.extend(found)
                rids.extend([source.rid] * len(found))
            last = page[-1].key
            if len(rows) >= self.part_rows:
                new_parts.append(self._put(rows_to_table(view.columns, rows, rids)))
                rows, rids = [], []
        if rows:
            new_parts.append(self._put(rows_to_table(view.columns, rows, rids)))
        written = sum(p["rows"] for p in new_parts)
        old = [] if full else stored.parts()
        kept, dropped = self._without(old, changed)
        parts = kept + new_parts
        if len(parts) > MAX_PARTS:
            merged = self._compact(view.columns, parts)
            dropped.extend(p["digest"] for p in parts if p not in merged)
            parts = merged
        if full:
            dropped.extend(p["digest"] for p in stored.parts())
        watermark = min(last, cutoff) if last is not None else after
        if watermark is not None and after is not None and watermark < after:
            watermark = after
        total = sum(p["rows"] for p in parts)
        self._commit(stored, parts, watermark, total, now)
        self._forget(dropped, keep={p["digest"] for p in parts})
        report = MaterializeReport(
            stored.name, full, len(changed), written, total, len(parts),
            time.perf_counter() - started,
        )  # fmt: skip
        self._audit(principal, stored, report)
        return report

    def _without(
        self, parts: Sequence[dict[str, Any]], changed: set[int]
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """The parts with the rows of ``changed`` resources removed (rewritten parts)."""
        kept: list[dict[str, Any]] = []
        dropped: list[str] = []
        low, high = (min(changed), max(changed)) if changed else (0, -1)
        for part in parts:
            if not changed or part["max_rid"] < low or part["min_rid"] > high:
                kept.append(part)
                continue
            table = from_parquet(self.services.blobs.get(part["digest"]))
            remaining = without_rids(table, changed)
            if remaining.num_rows == table.num_rows:
                kept.append(part)
                continue
            dropped.append(part["digest"])
            if remaining.num_rows:
                kept.append(self._put(remaining))
        return kept, dropped

    def _compact(self, columns: Any, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        tables = [from_parquet(self.services.blobs.get(p["digest"])) for p in parts]
        merged = pa.concat_tables(tables).combine_chunks()
        out = []
        for start in range(0, merged.num_rows, self.part_rows):
            out.append(self._put(merged.slice(start, self.part_rows)))
        return out

    def _commit(
        self,
        stored: StoredView,
        parts: list[dict[str, Any]],
        watermark: Key | None,
        total: int,
        now: datetime,
    ) -> None:
        V = warehouse_views
        with self.services.db.write() as conn:
            result = conn.execute(
                update(V)
                .where(V.c.id == stored.id, V.c.generation == stored.generation)
                .values(
                    manifest={"parts": parts, "columns": stored.compiled().column_names},
                    watermark_updated=watermark[0] if watermark else None,
                    watermark_rid=watermark[1] if watermark else None,
                    row_count=total,
                    materialized_at=now,
                    definition_version=stored.version,
                    generation=V.c.generation + 1,
                )
            )
        if result.rowcount != 1:
            raise Conflict("The view was changed or materialized meanwhile; run again.")

    def _forget(self, digests: Sequence[str], keep: set[str]) -> None:
        """Delete replaced parts no view refers to any more."""
        if not digests:
            return
        with self.services.db.read() as conn:
            manifests = conn.execute(select(warehouse_views.c.manifest)).scalars().all()
        used = set(keep)
        for manifest in manifests:
            used.update(p["digest"] for p in (manifest or {}).get("parts", []))
        for digest in set(digests) - used:
            self.services.blobs.delete(digest)

    def _audit(self, principal: Principal, stored: StoredView, report: MaterializeReport) -> None:
        self.services.audit.record(
            [
                AuditEvent.for_principal(
                    principal,
                    category="export",
                    action="E",
                    entity=f"ViewDefinition/{stored.id}",
                    description="view materialized",
                    flags="deidentified",
                    detail=report.to_json(),
                )
            ]
        )
