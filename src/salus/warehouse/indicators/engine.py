"""Computing indicators with DuckDB over the materialized views and the datasets.

A computation (:meth:`Indicators.compute`) opens an in-memory DuckDB session
(:func:`~salus.warehouse.query.view_table`: the views' encrypted Parquet parts
decrypted in memory) holding:

* the indicator's materialized views (``ind_*``, shipped in ``views/``);
* ``hospitals(org_key, hospital)``: the keyed pseudonym of
  ``Organization/{id}`` (``Organization/p-...``: view keys keep the type) of
  every hospital organization, so that
  ``Encounter.serviceProvider`` (pseudonymized in the views) gives the
  hospital back. Encounters must name their hospital as ``serviceProvider``;
  conditions, observations and imaging studies get theirs from their
  ``encounter``;
* ``stays`` (inpatient encounters, class ``IMP``: hospital, admission and
  discharge dates, disposition, sex, age band) and ``visits`` (every
  encounter: hospital, date, sex, age band);
* the operational datasets ``ds_beds``, ``ds_staff``, ``ds_equipment``,
  ``ds_medicines`` (accepted rows) and ``ds_submissions`` (first accepted
  submission per hospital, dataset and month);
* the functions ``icd10_chapter(code)`` (ICD-10 2019 chapters I to XXII),
  ``age_band``, ``days_in``, ``days_between`` and the helper views, written
  once for DuckDB and Spark (:mod:`.portable`).

Age bands (``0-14``, ``15-44``, ``45-64``, ``65+``, ``unknown``) use the
birth year (the views keep no more) and the year of the encounter.

The indicator's SQL gives cells per hospital, month and dimension; the
engine sums them over the dimensions not asked for, adds the network (all
hospitals) and applies small-cell suppression: a cell whose suppressed
counts (see the definition) are between 1 and ``k - 1``
(``SALUS_WAREHOUSE_INDICATOR_MIN_CELL``, default 5) loses its numerator,
denominator and value and is flagged ``suppressed``, for every reader but
the hospital the cell belongs to (and the host's SYSTEM principal).
"""

from __future__ import annotations

import getpass
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from salus.audit.events import AuditEvent
from salus.db.tables import organizations
from salus.db.tables_warehouse import dataset_rows, dataset_submissions
from salus.db.types import utcnow
from salus.errors import ConfigurationError, Conflict, Forbidden, InvalidInput, NotFound
from salus.security.principal import AuthMethod, Principal, PrincipalKind
from salus.security.roles import ROLES
from salus.warehouse.indicators.definitions_index import Indicator, indicator, view_definitions
from salus.warehouse.indicators.portable import DATASETS, statements
from salus.warehouse.indicators.snapshots import load_snapshot, store_snapshot
from salus.warehouse.query import view_table

if TYPE_CHECKING:
    from salus.services import Services
    from salus.warehouse.catalog import StoredView

__all__ = ["NETWORK", "IndicatorResult", "Indicators", "system_principal"]

#: The ``hospital`` of the network's cells.
NETWORK = "network"

#: dataset -> (column, source field or None, Arrow type)
_DATASET_COLUMNS: dict[str, list[tuple[str, str, pa.DataType]]] = {
    "beds": [
        ("ward", "ward_id", pa.string()),
        ("beds", "beds", pa.int64()),
        ("occupied_bed_days", "occupied_bed_days", pa.int64()),
    ],  # fmt: skip
    "staff": [("fte", "fte", pa.float64())],
    "equipment": [("downtime_hours", "downtime_hours", pa.float64())],
    "medicines": [("stockout_days", "stockout_days", pa.int64())],
}


def system_principal() -> Principal:
    """The host's SYSTEM principal (CLI, scheduled jobs)."""
    return Principal(
        kind=PrincipalKind.SYSTEM,
        id=f"indicators:{getpass.getuser()}"[:100],
        org_id="*",
        auth_method=AuthMethod.LOCAL,
    )


@dataclass(frozen=True, slots=True)
class IndicatorResult:
    indicator: Indicator
    dimensions: list[str]
    cells: list[dict[str, Any]]
    #: when the cells were computed (a scheduled snapshot, or now)
    computed_at: datetime | None = None

    @property
    def columns(self) -> list[str]:
        return [*self.dimensions, "numerator", "denominator", "value", "suppressed"]

    def to_json(self, min_cell: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "indicator": self.indicator.to_json(min_cell),
            "dimensions": self.dimensions,
            "cells": self.cells,
        }
        if self.computed_at is not None:
            out["computedAt"] = self.computed_at.isoformat(timespec="seconds")
        return out


def _convert(value: Any, kind: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_floating(kind):
        return float(value)
    if pa.types.is_integer(kind):
        return int(value)
    return str(value)


#: Serializes the bundled views' first storing within a process.
_VIEWS_LOCK = threading.Lock()


class Indicators:
    """Indicator computation for one Salus process (stateless; see the module doc)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        if services.warehouse is None:
            raise NotFound("The warehouse is not installed.")
        self.warehouse = services.warehouse

    @property
    def min_cell(self) -> int:
        return self.services.settings.warehouse_indicator_min_cell

    # -- access -------------------------------------------------------------------------
    def own_scope(self, principal: Principal) -> str | None:
        """``"*"``: sees every cell unsuppressed; a hospital id: that hospital's cells
        unsuppressed; None: every cell suppressed. Others are refused."""
        if principal.kind is PrincipalKind.SYSTEM:
            return "*"
        kind = self.services.org_kinds.kind(principal.org_id)
        if kind == "hospital" and principal.roles:
            return principal.org_id
        if kind == "authority" or any(
            ROLES[name].deidentified for name in principal.roles if name in ROLES
        ):
            return None
        if kind == "operator" and "administrator" in principal.roles:
            return None  # the network's operator: aggregates, suppressed as for the authority
        raise Forbidden("Indicators are for hospitals, the health authority and analysts.")

    # -- views ----------------------------------------------------------------------------
    def ensure_views(self) -> dict[str, StoredView]:
        """Store the bundled ViewDefinitions (or update them when they changed).

        Concurrent first calls (two requests on a fresh install, two server
        processes) would each create the same views: one at a time per
        process, and a conflict with another process is read back once.
        """
        with _VIEWS_LOCK:
            try:
                return self._ensure_views()
            except (Conflict, IntegrityError):
                return self._ensure_views()  # another process stored them first

    def _ensure_views(self) -> dict[str, StoredView]:
        catalog = self.warehouse.catalog
        stored: dict[str, StoredView] = {}
        for name, definition in view_definitions().items():
            body = {k: v for k, v in definition.items() if k != "resourceType"}
            try:
                current: StoredView | None = catalog.by_name(name)
            except NotFound:
                current = None
            if current is None or current.definition != body:
                view_id = current.id if current is not None else name.replace("_", "-")
                current, _ = catalog.save(system_principal(), definition, view_id)
            stored[name] = current
        return stored

    def refresh(self, *, full: bool = False) -> None:
        """Materialize the indicators' views (incrementally unless ``full``)."""
        for stored in self.ensure_views().values():
            self.warehouse.materializer.run(stored, full=full, principal=system_principal())

    # -- tables -----------------------------------------------------------------------------
    def _hospitals(self) -> pa.Table:
        pseudo = self.services.fhir_router.pseudonymizer
        if pseudo is None:
            raise ConfigurationError("De-identification is not configured.")
        with self.services.db.read() as conn:
            ids = [
                str(r.id)
                for r in conn.execute(
                    select(organizations.c.id).where(organizations.c.kind == "hospital")
                )
            ]
        return pa.table(
            {
                "org_key": pa.array(
                    [f"Organization/{pseudo.id('Organization', i)}" for i in ids], pa.string()
                ),
                "hospital": pa.array(ids, pa.string()),
            }
        )

    def _dataset(self, name: str) -> pa.Table:
        spec = _DATASET_COLUMNS[name]
        with self.services.db.read() as conn:
            rows = conn.execute(
                select(dataset_rows.c.org_id, dataset_rows.c.period, dataset_rows.c.data).where(
                    dataset_rows.c.dataset == name
                )
            ).all()
        columns: dict[str, pa.Array] = {
            "hospital": pa.array([r.org_id for r in rows], pa.string()),
            "period": pa.array([r.period for r in rows], pa.string()),
        }
        for column, field, kind in spec:
            columns[column] = pa.array([_convert(r.data.get(field), kind) for r in rows], kind)
        return pa.table(columns)

    def _submissions(self) -> pa.Table:
        s = dataset_submissions
        with self.services.db.read() as conn:
            rows = conn.execute(select(s.c.dataset, s.c.org_id, s.c.period, s.c.submitted_at)).all()
        first: dict[tuple[str, str, str], Any] = {}
        for r in rows:
            key = (str(r.dataset), str(r.org_id), str(r.period))
            at = r.submitted_at.replace(tzinfo=None)
            first[key] = min(first.get(key, at), at)
        keys = sorted(first)
        return pa.table(
            {
                "dataset": pa.array([k[0] for k in keys], pa.string()),
                "hospital": pa.array([k[1] for k in keys], pa.string()),
                "period": pa.array([k[2] for k in keys], pa.string()),
                "first_at": pa.array([first[k] for k in keys], pa.timestamp("us")),
            }
        )

    def _cells(self, ind: Indicator) -> list[dict[str, Any]]:
        con = duckdb.connect(":memory:")
        try:
            con.register("hospitals", self._hospitals())
            if ind.views:
                stored = self.ensure_views()
                for name in {*ind.views, "ind_encounters", "ind_patients"}:
                    con.register(name, view_table(self.services.blobs, stored[name]))
            for name in DATASETS:
                con.register(f"ds_{name}_rows", self._dataset(name))
            con.register("ds_submissions", self._submissions())
            for statement in statements("duckdb", clinical=bool(ind.views)):
                con.execute(statement)
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            cursor = con.execute(ind.sql)
            assert cursor.description is not None  # noqa: S101 - a SELECT
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        finally:
            con.close()

    def input_tables(self) -> dict[str, pa.Table]:
        """Every table the indicator statements read (before the helper views of
        :mod:`.portable`), by name: the hand-off to another SQL engine."""
        stored = self.ensure_views()
        tables = {name: view_table(self.services.blobs, view) for name, view in stored.items()}
        tables["hospitals"] = self._hospitals()
        for name in DATASETS:
            tables[f"ds_{name}_rows"] = self._dataset(name)
        tables["ds_submissions"] = self._submissions()
        return tables

    # -- computation --------------------------------------------------------------------------
    def compute(
        self,
        principal: Principal,
        key: str,
        *,
        period: str | None = None,
        hospital: str | None = None,
        by: Sequence[str] = (),
        refresh: bool = False,
    ) -> IndicatorResult:
        """One indicator's cells as ``principal`` may see them (see the module doc)."""
        ind = indicator(key)
        scope = self.own_scope(principal)
        extra = [d for d in by if d]
        bad = [d for d in extra if d not in ind.disaggregations or d in ("hospital", "period")]
        if bad:
            more = ", ".join(ind.disaggregations[2:]) or "nothing more"
            raise InvalidInput(
                f"This indicator is disaggregated by {more}.",
                expression=["by"],
            )
        dims = ["hospital", "period", *[d for d in ind.always if d not in extra], *extra]
        snapshot = None if refresh else load_snapshot(self.services, ind)
        if snapshot is not None:  # the scheduled computation (snapshots.py)
            raw, computed_at = snapshot.cells, snapshot.computed_at
        elif refresh:
            self.refresh()
            raw, computed_at = self.snapshot(ind)
        else:
            raw, computed_at = self._cells(ind), utcnow()
        if period is not None:
            raw = [c for c in raw if c["period"] == period]
        totals: dict[tuple[Any, ...], list[Any]] = {}
        for cell in raw:
            for where in (cell["hospital"], NETWORK):
                if hospital is not None and where != hospital:
                    continue
                k = (where, *(cell[d] for d in dims[1:]))
                slot = totals.setdefault(k, [None, None])
                for i, part in enumerate(("numerator", "denominator")):
                    if cell[part] is not None:
                        slot[i] = (slot[i] or 0) + cell[part]
        cells = [self._cell(ind, scope, dims, k, n, d) for k, (n, d) in totals.items()]
        cells.sort(key=lambda c: tuple((c[d] == NETWORK, str(c[d])) for d in dims))
        self.services.audit.record(
            [
                AuditEvent.for_principal(
                    principal,
                    category="export",
                    action="E",
                    entity=f"indicator/{ind.id}",
                    description="indicator computed",
                    flags="deidentified",
                    detail={"version": ind.version, "cells": len(cells)},
                )
            ]
        )
        return IndicatorResult(ind, dims, cells, computed_at)

    def snapshot(self, ind: Indicator) -> tuple[list[dict[str, Any]], datetime]:
        """Compute ``ind`` (unsuppressed cells) and store them as its snapshot."""
        raw = self._cells(ind)
        return raw, store_snapshot(self.services, ind, raw)

    def _cell(
        self, ind: Indicator, scope: str | None, dims: list[str], k: tuple[Any, ...],
        numerator: Any, denominator: Any,
    ) -> dict[str, Any]:  # fmt: skip
        cell: dict[str, Any] = dict(zip(dims, k, strict=True))
        numerator = _number(numerator)
        denominator = _number(denominator)
        if ind.scale is None:
            value = numerator
        elif denominator:
            value = round(float(numerator or 0) / float(denominator) * ind.scale, 4)
        else:
            value = None
        counts = {"numerator": numerator, "denominator": denominator}
        small = any(
            counts[name] is not None and 0 < counts[name] < self.min_cell
            for name in ind.suppressed_counts
        )
        hidden = small and scope != "*" and scope != cell["hospital"]
        if hidden:
            numerator = denominator = value = None
        cell.update(numerator=numerator, denominator=denominator, value=value, suppressed=hidden)
        return cell


def _number(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if value is not None and not isinstance(value, int | float):
        return float(value)
    return value
