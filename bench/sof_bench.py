"""SQL-on-FHIR view materialization throughput (resources/s), Salus against peers.

Data: the Synthea transaction Bundles in ``tests/data/fhir/synthea`` (synthetic,
Apache-2.0), replicated with new ids (and matching references) until
``--scale`` resources (default 50,000; the issue's figure is 1,000,000).
Four views: patient demographics, observation values, encounters, conditions
(the shapes of the SQL-on-FHIR IG's examples).

Contenders, alternated round by round (median and min-max of ``--rounds``):

* **salus**: :func:`salus.warehouse.sqlonfhir.compile_view` applied to every
  resource, rows to Arrow, Parquet (zstd) in memory: what a materialization
  does after reading the store (the store read, decryption and
  de-identification are measured separately as **salus+deid**, which adds
  :func:`salus.fhir.deidview.deidentify` per resource).
* **duckdb floor**: DuckDB reading the same resources (NDJSON per type) and
  writing the same columns to Parquet with its JSON functions: no
  ViewDefinition logic, the floor a hand-written SQL extraction reaches.
* **pathling**: Pathling's ``view`` over the same NDJSON, when the
  ``pathling`` package and its Spark library can run here; otherwise skipped
  with the reason (its PyPI package fetches the Spark library from a Maven
  repository at run time).

Run: ``python bench/sof_bench.py --scale 50000 --rounds 3`` (about a minute on
2 cores). Results go in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SYNTHEA = ROOT / "tests" / "data" / "fhir" / "synthea"

VIEWS: list[dict[str, Any]] = [
    {
        "name": "patient_demographics",
        "resource": "Patient",
        "select": [
            {
                "column": [
                    {"name": "patient_key", "path": "getResourceKey()"},
                    {"name": "gender", "path": "gender", "type": "code"},
                    {"name": "birth_date", "path": "birthDate", "type": "date"},
                    {"name": "family", "path": "name.family.first()", "type": "string"},
                ]
            }
        ],
    },
    {
        "name": "observation_values",
        "resource": "Observation",
        "select": [
            {
                "column": [
                    {"name": "obs_key", "path": "getResourceKey()"},
                    {"name": "patient_key", "path": "subject.getReferenceKey(Patient)"},
                    {"name": "code", "path": "code.coding.code.first()", "type": "code"},
                    {"name": "value", "path": "value.ofType(Quantity).value", "type": "decimal"},
                    {"name": "effective", "path": "effective.ofType(dateTime)", "type": "dateTime"},
                ]
            }
        ],
    },
    {
        "name": "encounter_flat",
        "resource": "Encounter",
        "select": [
            {
                "column": [
                    {"name": "enc_key", "path": "getResourceKey()"},
                    {"name": "patient_key", "path": "subject.getReferenceKey(Patient)"},
                    {"name": "class", "path": "class.code", "type": "code"},
                    {"name": "start", "path": "period.start", "type": "dateTime"},
                    {"name": "end", "path": "period.end", "type": "dateTime"},
                ]
            },
            {
                "forEachOrNull": "type.coding",
                "column": [{"name": "type_code", "path": "code", "type": "code"}],
            },
        ],
    },
    {
        "name": "condition_flat",
        "resource": "Condition",
        "select": [
            {
                "column": [
                    {"name": "cond_key", "path": "getResourceKey()"},
                    {"name": "patient_key", "path": "subject.getReferenceKey(Patient)"},
                    {"name": "onset", "path": "onset.ofType(dateTime)", "type": "dateTime"},
                ]
            },
            {
                "forEachOrNull": "code.coding",
                "column": [
                    {"name": "system", "path": "system", "type": "uri"},
                    {"name": "code", "path": "code", "type": "code"},
                ],
            },
        ],
    },
]
TYPES = [v["resource"] for v in VIEWS]

#: DuckDB's version of the same columns (the floor: JSON extraction, no view logic).
FLOOR_SQL = {
    "Patient": "select 'Patient/' || id as patient_key, gender, \"birthDate\" as birth_date, "
    "name[1].family as family from src",
    "Observation": "select 'Observation/' || id as obs_key, subject.reference as patient_key, "
    'code.coding[1].code as code, "valueQuantity".value as value, '
    '"effectiveDateTime" as effective from src',
    "Encounter": "select 'Encounter/' || id as enc_key, subject.reference as patient_key, "
    'class.code as class, period.start as start, period."end" as "end", '
    "unnest(type[1].coding).code as type_code from src",
    "Condition": "select 'Condition/' || id as cond_key, subject.reference as patient_key, "
    '"onsetDateTime" as onset, unnest(code.coding).system as system, '
    "unnest(code.coding).code as code from src",
}


def base_resources(types: list[str]) -> list[dict[str, Any]]:
    """The Synthea resources of ``types``, with relative references (``Type/id``)."""
    base: list[dict[str, Any]] = []
    for path in sorted(SYNTHEA.glob("*.json.gz")):
        bundle = json.loads(gzip.open(path).read())
        for entry in bundle["entry"]:
            resource = entry["resource"]
            resource.setdefault("id", entry["fullUrl"].split(":")[-1])
            base.append(resource)
    text = json.dumps(base)
    # urn:uuid references become relative ones, as a server stores them
    for resource in base:
        text = text.replace(
            f"urn:uuid:{resource['id']}", f"{resource['resourceType']}/{resource['id']}"
        )
    return [r for r in json.loads(text) if r["resourceType"] in types]


def replicate(
    types: list[str], scale: int, references: tuple[str, ...] = ("subject",)
) -> Iterator[dict[str, Any]]:
    """``scale`` resources of ``types``, one at a time: copy ``n`` of each Synthea
    resource gets the id suffix ``-n``, and so do its ``references`` (the
    elements named; other references, such as organizations, are kept)."""
    base = base_resources(types)
    copy_no = 0
    total = 0
    while total < scale:
        suffix = f"-{copy_no}"
        for resource in base:
            if total >= scale:
                return
            clone = copy.deepcopy(resource)
            clone["id"] = resource["id"] + suffix
            for element in references:
                ref = clone.get(element)
                if isinstance(ref, dict) and "reference" in ref:
                    ref["reference"] += suffix
            yield clone
            total += 1
        copy_no += 1


def load(scale: int) -> dict[str, list[dict[str, Any]]]:
    """Synthea resources of the four types, replicated with new ids to ``scale``."""
    out: dict[str, list[dict[str, Any]]] = {t: [] for t in TYPES}
    for clone in replicate(TYPES, scale):
        out[clone["resourceType"]].append(clone)
    return out


def salus(data: dict[str, list[dict[str, Any]]], deid: bool) -> int:
    from salus.fhir.deidview import Pseudonymizer, deidentify
    from salus.warehouse.parquet import rows_to_table, to_parquet
    from salus.warehouse.sqlonfhir import compile_view

    pseudo = Pseudonymizer(b"bench-secret")
    written = 0
    for definition in VIEWS:
        view = compile_view(definition)
        rows: list[tuple[Any, ...]] = []
        for resource in data[view.resource]:
            rows.extend(view.rows(deidentify(resource, pseudo) if deid else resource))
        written += len(to_parquet(rows_to_table(view.columns, rows, None)))
    return written


def duckdb_floor(files: dict[str, Path], out: Path) -> int:
    import duckdb

    con = duckdb.connect()
    written = 0
    for res_type, path in files.items():
        target = out / f"{res_type}.parquet"
        con.execute(
            f"create or replace temp view src as select * from read_json_auto('{path}', "  # noqa: S608
            "format='newline_delimited', sample_size=-1)"
        )
        con.execute(
            f"copy ({FLOOR_SQL[res_type]}) to '{target}' (format parquet, compression zstd)"
        )
        written += target.stat().st_size
    con.close()
    return written


def pathling_runner(files: dict[str, Path]) -> tuple[Callable[[], int] | None, str]:
    try:
        from pathling import PathlingContext  # type: ignore[import-not-found]
    except ImportError:
        return (
            None,
            "pathling is not installed (pip install pathling: needs its Spark library from Maven)",
        )
    try:
        pc = PathlingContext.create()
        source = pc.read.ndjson(str(next(iter(files.values())).parent))
    except Exception as exc:  # the Spark library cannot be fetched here
        return None, f"pathling could not start: {type(exc).__name__}"

    def run() -> int:
        rows = 0
        for definition in VIEWS:
            frame = source.view(definition["resource"], select=definition["select"])
            rows += frame.count()
        return rows

    return run, "ok"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = load(args.scale)
    total = sum(len(v) for v in data.values())
    print(f"{total} resources: " + ", ".join(f"{k} {len(v)}" for k, v in data.items()))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = {}
        for res_type, resources in data.items():
            files[res_type] = folder / f"{res_type}.ndjson"
            files[res_type].write_text("".join(json.dumps(r) + "\n" for r in resources))
        out = folder / "out"
        out.mkdir()
        contenders: dict[str, Callable[[], int]] = {
            "salus": lambda: salus(data, False),
            "salus+deid": lambda: salus(data, True),
            "duckdb floor": lambda: duckdb_floor(files, out),
        }
        runner, why = pathling_runner(files)
        if runner is not None:
            contenders["pathling"] = runner
        else:
            print(f"pathling: skipped ({why})")
        times: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for round_no in range(args.rounds):
            order = names[round_no % len(names) :] + names[: round_no % len(names)]
            for name in order:
                started = time.perf_counter()
                contenders[name]()
                times[name].append(time.perf_counter() - started)
    print(f"{'contender':14} {'median s':>9} {'resources/s':>12} {'min-max resources/s':>22}")
    for name, values in times.items():
        med = statistics.median(values)
        low, high = total / max(values), total / min(values)
        print(f"{name:14} {med:9.2f} {total / med:12,.0f} {low:10,.0f} - {high:,.0f}")


if __name__ == "__main__":
    main()
