"""The indicators' SQL on more than one engine: DuckDB here, Spark beyond one machine.

Indicator statements (``definitions/*.json``) are written in the SQL that
DuckDB and Spark SQL (4.0 or later, for SQL functions) share: ``GROUP BY
ALL``, aggregate ``FILTER (WHERE ...)``, ``date + INTERVAL n DAY``,
``substr``, ``CAST(x AS STRING)``, ``coalesce``, ``EXISTS`` subqueries,
``||``. What differs is kept here, as data rendered per dialect:

* helper **functions** (``icd10_chapter``, ``age_band``, ``days_in``,
  ``days_between``): DuckDB ``CREATE MACRO``; Spark ``CREATE TEMPORARY
  FUNCTION ... RETURNS ... RETURN`` (SQL functions, with typed parameters);
  ``days_between`` is DuckDB's ``date_diff('day', a, b)`` and Spark's
  ``datediff(b, a)`` (DuckDB's ``strftime`` and three-argument
  ``date_diff`` are not Spark SQL, hence none in the statements);
* helper **views** (``visits``, ``stays``, ``ds_*``): the same SELECT,
  ``CREATE VIEW`` or ``CREATE TEMPORARY VIEW``.

The input tables are the same in both: the indicator ViewDefinitions'
Parquet (``ind_*``), ``hospitals(org_key, hospital)``, ``ds_beds_rows``,
``ds_staff_rows``, ``ds_equipment_rows``, ``ds_medicines_rows`` and
``ds_submissions`` (:mod:`.engine` builds them). :func:`handoff` writes them as plain Parquet
files with the statements, for a Spark cluster (an explicit, audited
extract: the files are de-identified but not encrypted).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from salus.security.principal import Principal
    from salus.warehouse.indicators.engine import Indicators

__all__ = ["DATASETS", "FUNCTIONS", "VIEWS", "Dialect", "handoff", "statements"]

Dialect = Literal["duckdb", "spark"]
DATASETS = ("beds", "staff", "equipment", "medicines")


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    params: tuple[tuple[str, str], ...]  # (name, Spark type)
    returns: str  # Spark type
    duckdb: str
    spark: str

    def render(self, dialect: Dialect) -> str:
        if dialect == "duckdb":
            args = ", ".join(p for p, _ in self.params)
            return f"CREATE MACRO {self.name}({args}) AS {self.duckdb}"
        args = ", ".join(f"{p} {t}" for p, t in self.params)
        return (
            f"CREATE OR REPLACE TEMPORARY FUNCTION {self.name}({args}) "
            f"RETURNS {self.returns} RETURN {self.spark}"
        )


_ICD10 = """CASE
      WHEN c IS NULL THEN NULL
      WHEN substr(upper(c), 1, 1) IN ('A', 'B') THEN 'I'
      WHEN substr(upper(c), 1, 1) = 'C' THEN 'II'
      WHEN substr(upper(c), 1, 1) = 'D' AND substr(c, 2, 2) < '50' THEN 'II'
      WHEN substr(upper(c), 1, 1) = 'D' THEN 'III'
      WHEN substr(upper(c), 1, 1) = 'E' THEN 'IV'
      WHEN substr(upper(c), 1, 1) = 'F' THEN 'V'
      WHEN substr(upper(c), 1, 1) = 'G' THEN 'VI'
      WHEN substr(upper(c), 1, 1) = 'H' AND substr(c, 2, 2) < '60' THEN 'VII'
      WHEN substr(upper(c), 1, 1) = 'H' THEN 'VIII'
      WHEN substr(upper(c), 1, 1) = 'I' THEN 'IX'
      WHEN substr(upper(c), 1, 1) = 'J' THEN 'X'
      WHEN substr(upper(c), 1, 1) = 'K' THEN 'XI'
      WHEN substr(upper(c), 1, 1) = 'L' THEN 'XII'
      WHEN substr(upper(c), 1, 1) = 'M' THEN 'XIII'
      WHEN substr(upper(c), 1, 1) = 'N' THEN 'XIV'
      WHEN substr(upper(c), 1, 1) = 'O' THEN 'XV'
      WHEN substr(upper(c), 1, 1) = 'P' THEN 'XVI'
      WHEN substr(upper(c), 1, 1) = 'Q' THEN 'XVII'
      WHEN substr(upper(c), 1, 1) = 'R' THEN 'XVIII'
      WHEN substr(upper(c), 1, 1) IN ('S', 'T') THEN 'XIX'
      WHEN substr(upper(c), 1, 1) IN ('V', 'W', 'X', 'Y') THEN 'XX'
      WHEN substr(upper(c), 1, 1) = 'Z' THEN 'XXI'
      WHEN substr(upper(c), 1, 1) = 'U' THEN 'XXII'
      ELSE 'unknown' END"""
_AGE = """CASE
      WHEN birth IS NULL OR on_date IS NULL THEN 'unknown'
      WHEN year(on_date) - CAST(substr(birth, 1, 4) AS INTEGER) < 15 THEN '0-14'
      WHEN year(on_date) - CAST(substr(birth, 1, 4) AS INTEGER) < 45 THEN '15-44'
      WHEN year(on_date) - CAST(substr(birth, 1, 4) AS INTEGER) < 65 THEN '45-64'
      ELSE '65+' END"""
_DAYS_IN = "day(last_day(CAST(period || '-01' AS DATE)))"

FUNCTIONS = (
    Function("icd10_chapter", (("c", "STRING"),), "STRING", _ICD10, _ICD10),
    Function("age_band", (("birth", "STRING"), ("on_date", "DATE")), "STRING", _AGE, _AGE),
    Function("days_in", (("period", "STRING"),), "INT", _DAYS_IN, _DAYS_IN),
    Function(
        "days_between",
        (("a", "DATE"), ("b", "DATE")),
        "INT",
        "date_diff('day', a, b)",
        "datediff(b, a)",
    ),
)

#: (name, SELECT, needs the clinical views)
VIEWS: tuple[tuple[str, str, bool], ...] = (
    (
        "visits",
        """SELECT e.key AS encounter, e.patient, h.hospital, e.class,
  CAST(substr(e.start_at, 1, 10) AS DATE) AS visit_date,
  CAST(substr(e.end_at, 1, 10) AS DATE) AS end_date, e.disposition,
  coalesce(p.gender, 'unknown') AS sex,
  age_band(p.birth, CAST(substr(e.start_at, 1, 10) AS DATE)) AS age_band
FROM ind_encounters e JOIN hospitals h ON h.org_key = e.provider
LEFT JOIN ind_patients p ON p.key = e.patient
WHERE e.start_at IS NOT NULL""",
        True,
    ),
    (
        "stays",
        """SELECT encounter, patient, hospital, visit_date AS admit_date,
  end_date AS discharge_date, disposition, sex, age_band FROM visits WHERE class = 'IMP'""",
        True,
    ),
    *(
        (
            f"ds_{name}",
            f"SELECT *, days_in(period) AS days_in_month FROM ds_{name}_rows",  # noqa: S608 - fixed names
            False,
        )
        for name in DATASETS
    ),
)


def statements(dialect: Dialect, *, clinical: bool = True) -> list[str]:
    """The helper functions and views, in ``dialect`` (module doc)."""
    out = [f.render(dialect) for f in FUNCTIONS]
    create = "CREATE VIEW" if dialect == "duckdb" else "CREATE OR REPLACE TEMPORARY VIEW"
    out += [f"{create} {name} AS {sql}" for name, sql, needs in VIEWS if clinical or not needs]
    return out


def handoff(
    engine: Indicators, principal: Principal, folder: Path, *, tables: Iterable[str] = ()
) -> dict[str, Path]:
    """Write the indicators' input tables as Parquet under ``folder`` (one file
    each), ``prelude-{dialect}.sql`` and ``indicators.json`` (the statements);
    returns the Parquet files by table name. Audited."""
    from salus.audit.events import AuditEvent
    from salus.warehouse.indicators.definitions_index import indicators

    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    inputs: dict[str, pa.Table] = engine.input_tables()
    for name, table in inputs.items():
        if tables and name not in tables:
            continue
        path = folder / f"{name}.parquet"
        pq.write_table(table, path)
        written[name] = path
    for dialect in ("duckdb", "spark"):
        text = ";\n\n".join(statements(dialect)) + ";\n"
        (folder / f"prelude-{dialect}.sql").write_text(text, encoding="utf-8")
    catalog = [
        {"id": i.id, "version": i.version, "sql": i.sql, "suppressedCounts": i.suppressed_counts}
        for i in indicators()
    ]
    (folder / "indicators.json").write_text(json.dumps(catalog, indent=1), encoding="utf-8")
    engine.services.audit.record(
        [
            AuditEvent.for_principal(
                principal,
                category="export",
                action="E",
                entity="indicators/handoff",
                description="indicator inputs extracted as Parquet",
                flags="deidentified",
                detail={"tables": sorted(written)},
            )
        ]
    )
    return written
