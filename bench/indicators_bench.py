"""Indicator computation time (ms per indicator) over the replicated Synthea data.

Data: the Synthea resources of ``tests/data/fhir/synthea`` (synthetic,
Apache-2.0) of the types the indicators' ViewDefinitions read (Patient,
Encounter, Condition, Observation, ImagingStudy), replicated to ``--scale``
resources with :func:`sof_bench.replicate` (copy ``n`` gets the id suffix
``-n``, and so do its ``subject`` and ``encounter`` references; the
organizations are kept, so every copy belongs to the same hospitals).
Resources are streamed: only the views' Arrow tables are held in memory.

Steps, as :class:`salus.warehouse.indicators.engine.Indicators` does them:

1. **build**: the bundled ViewDefinitions (``views/ind_*.json``) compiled by
   :func:`salus.warehouse.sqlonfhir.compile_view` and applied to every
   resource after :func:`salus.fhir.deidview.deidentify` with a
   :class:`~salus.fhir.deidview.Pseudonymizer` (what the materializer does),
   rows to Arrow; timed without the cloning of the replicas (resources/s).
   ``hospitals`` comes from the engine's ``_hospitals`` (the distinct
   ``Encounter.serviceProvider`` organizations as hospitals), the empty
   operational dataset tables from its ``_dataset`` and ``_submissions`` (a
   stand-in database that returns no rows: their schemas are the engine's).
2. **compute**: the tables registered in one in-memory DuckDB session with
   :func:`salus.warehouse.indicators.portable.statements`; each indicator's
   SQL run and fetched, median of ``--rounds`` (the engine's summing over
   dimensions, network totals and suppression, in Python, are not timed).

Read with care: the Synthea sample has ambulatory and emergency encounters
only (no ``IMP`` stays), SNOMED-coded conditions (no ICD-10) and no imaging
studies, and no operational datasets are loaded: the stay, diagnosis,
imaging and dataset indicators run over empty inputs (``rows out`` shows it).
``--inpatient-every N`` makes every N-th Encounter an inpatient stay (class
``IMP``, discharge disposition ``home``, one in 20 of them ``exp``) before
de-identification, so that the stay indicators (admissions, discharges,
length of stay, mortality, readmissions) have rows to compute.

Run: ``python bench/indicators_bench.py --scale 50000 --rounds 5`` (5 s on
2 cores, 200 MB); the issue's figure:
``python bench/indicators_bench.py --scale 1000000 --rounds 5`` (add
``--inpatient-every 4`` for the stay indicators). The resources are streamed,
not held (``sof_bench.py`` holds them: about 2 GB at that scale).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sof_bench import replicate  # noqa: E402

#: Rows buffered per view before they become an Arrow table.
CHUNK_ROWS = 100_000
_HL7 = "http://terminology.hl7.org/CodeSystem"


class _NoRowsDb:
    """A stand-in for ``services.db`` whose queries all return ``rows``."""

    def __init__(self, rows: list[Any]) -> None:
        self.rows = rows

    @contextmanager
    def read(self) -> Iterator[_NoRowsDb]:
        yield self

    def execute(self, _statement: Any) -> _NoRowsDb:
        return self

    def all(self) -> list[Any]:
        return self.rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)


def _engine(pseudo: Any, rows: list[Any]) -> Any:
    """Enough of an :class:`Indicators` for its table builders."""
    services = SimpleNamespace(
        fhir_router=SimpleNamespace(pseudonymizer=pseudo), db=_NoRowsDb(rows)
    )
    return SimpleNamespace(services=services)


def _make_inpatient(encounter: dict[str, Any], number: int) -> None:
    encounter["class"] = {"system": f"{_HL7}/v3-ActCode", "code": "IMP"}
    code = "exp" if number % 20 == 0 else "home"
    system = f"{_HL7}/discharge-disposition"
    encounter["hospitalization"] = {
        "dischargeDisposition": {"coding": [{"system": system, "code": code}]}
    }


def build(
    scale: int, pseudo: Any, inpatient_every: int = 0
) -> tuple[dict[str, Any], int, float, dict[str, int]]:
    """The ``ind_*`` tables and the others the statements read; returns
    (tables, resources, seconds spent in views and de-identification, count per type)."""
    import pyarrow as pa

    from salus.fhir.deidview import deidentify
    from salus.warehouse.indicators.definitions_index import view_definitions
    from salus.warehouse.indicators.engine import Indicators
    from salus.warehouse.indicators.portable import DATASETS
    from salus.warehouse.parquet import arrow_schema, rows_to_table
    from salus.warehouse.sqlonfhir import compile_view

    views = {name: compile_view(d) for name, d in view_definitions().items()}
    by_type = {view.resource: name for name, view in views.items()}
    rows: dict[str, list[tuple[Any, ...]]] = {name: [] for name in views}
    chunks: dict[str, list[Any]] = {name: [] for name in views}
    counts = dict.fromkeys(by_type, 0)
    providers: set[str] = set()
    spent = 0.0
    total = 0
    for resource in replicate(list(by_type), scale, ("subject", "encounter")):
        total += 1
        res_type = resource["resourceType"]
        counts[res_type] += 1
        if res_type == "Encounter":
            if inpatient_every and counts[res_type] % inpatient_every == 0:
                _make_inpatient(resource, counts[res_type] // inpatient_every)
            ref = (resource.get("serviceProvider") or {}).get("reference", "")
            if ref.startswith("Organization/"):
                providers.add(ref.split("/", 1)[1])
        started = time.perf_counter()
        name = by_type[res_type]
        view = views[name]
        buffer = rows[name]
        buffer.extend(view.rows(deidentify(resource, pseudo)))
        if len(buffer) >= CHUNK_ROWS:
            chunks[name].append(rows_to_table(view.columns, buffer, None))
            rows[name] = []
        spent += time.perf_counter() - started
    tables: dict[str, Any] = {}
    started = time.perf_counter()
    for name, view in views.items():
        if rows[name]:
            chunks[name].append(rows_to_table(view.columns, rows[name], None))
        schema = arrow_schema(view.columns, with_rid=False)
        tables[name] = pa.concat_tables(chunks[name]) if chunks[name] else schema.empty_table()
    spent += time.perf_counter() - started
    orgs = [SimpleNamespace(id=i) for i in sorted(providers)]
    tables["hospitals"] = Indicators._hospitals(_engine(pseudo, orgs))
    empty = _engine(pseudo, [])
    for name in DATASETS:
        tables[f"ds_{name}_rows"] = Indicators._dataset(empty, name)
    tables["ds_submissions"] = Indicators._submissions(empty)
    return tables, total, spent, counts


def main() -> None:
    import duckdb

    from salus.fhir.deidview import Pseudonymizer
    from salus.warehouse.indicators.definitions_index import indicators
    from salus.warehouse.indicators.portable import statements

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--inpatient-every", type=int, default=0, help="make every N-th Encounter a stay"
    )
    args = parser.parse_args()

    tables, total, spent, counts = build(
        args.scale, Pseudonymizer(b"bench-secret"), args.inpatient_every
    )
    print(f"{total} resources: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(
        f"build ind_* tables (deidentify + views + Arrow): {spent:.2f} s, "
        f"{total / spent:,.0f} resources/s; "
        + ", ".join(f"{k} {t.num_rows}" for k, t in tables.items())
    )

    con = duckdb.connect(":memory:")
    started = time.perf_counter()
    for name, table in tables.items():
        con.register(name, table)
    for statement in statements("duckdb", clinical=True):
        con.execute(statement)
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    setup = time.perf_counter() - started
    print(f"session setup (register tables, helper statements): {setup * 1000:.1f} ms")

    times: dict[str, list[float]] = {ind.id: [] for ind in indicators()}
    rows_out: dict[str, int] = {}
    for _ in range(args.rounds):
        for ind in indicators():
            started = time.perf_counter()
            rows_out[ind.id] = len(con.execute(ind.sql).fetchall())
            times[ind.id].append(time.perf_counter() - started)
    con.close()

    print(f"{'indicator':30} {'rows out':>9} {'median ms':>10} {'min-max ms':>16}")
    for key, values in times.items():
        low, high = min(values) * 1000, max(values) * 1000
        print(
            f"{key:30} {rows_out[key]:9} {statistics.median(values) * 1000:10.1f} "
            f"{low:7.1f} - {high:.1f}"
        )
    medians = sum(statistics.median(v) for v in times.values())
    print(f"{'total (sum of medians)':30} {sum(rows_out.values()):9} {medians * 1000:10.1f}")


if __name__ == "__main__":
    main()
