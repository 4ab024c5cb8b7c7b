"""PostgreSQL's row estimates for search conditions (ADR 22): the planner picks
a chain's plan from them, so a condition must not be written in a way that
makes it guess far too few rows. Checked with EXPLAIN on a migrated database
holding a few thousand index rows and fresh statistics."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import insert, true

from salus.db.engine import Database
from salus.db.tables import fhir_idx_reference, fhir_idx_string, fhir_resources
from salus.fhir import searching
from salus.fhir.query import SearchPlan, build_search, type_lookup
from salus.fhir.search import get_registry
from salus.fhir.store import RESOURCE_COLUMNS
from salus.security.policy import RecordFilter

SYLLABLES = ("ba", "ko", "ni", "ru", "te")


def _estimate(db: Database, res_type: str, params: list[tuple[str, str]]) -> float:
    plan = SearchPlan(type_lookup(get_registry().params_for), lambda table: true())
    (condition,) = build_search(plan, res_type, params, lenient=False).conditions
    rids = plan.subqueries[id(condition)][1]
    with db.engine.connect() as conn:
        compiled = rids.compile(conn)
        row = conn.exec_driver_sql(
            f"EXPLAIN (FORMAT JSON) {compiled}", compiled.construct_params()
        ).scalar_one()
    found = row if isinstance(row, list) else json.loads(row)
    return float(found[0]["Plan"]["Plan Rows"])


def test_a_string_prefix_is_estimated_from_its_like_alone(db: Database) -> None:
    """``family=Ni`` on PostgreSQL is ``norm LIKE 'ni%'`` only: the pattern-ops
    index takes its range from the LIKE. The code-point range SQLite needs,
    written beside it, made PostgreSQL multiply two selectivities of one
    condition (3 Patients estimated where 2,504 matched at 1,000,000 resources)."""
    if db.is_sqlite:
        pytest.skip("row estimates of PostgreSQL's planner; SQLite's plans: test_fhir_search_plans")
    rows = [
        {
            "rid": n,
            "res_type": "Patient",
            "param": "family",
            "norm": f"{SYLLABLES[n % 5]}{SYLLABLES[n // 5 % 5]}{n}",
            "exact": "x",
        }
        for n in range(5000)
    ]
    with db.engine.begin() as conn:
        conn.execute(insert(fhir_idx_string), rows)
        conn.exec_driver_sql("ANALYZE fhir_idx_string")
    matching = sum(1 for r in rows if str(r["norm"]).startswith("ni"))
    assert matching == 1000
    estimate = _estimate(db, "Patient", [("family", "Ni")])
    assert estimate >= matching / 2, estimate


def _rows_read(plan: dict[str, Any], alias: str) -> float:
    """Rows that the nodes scanning ``alias`` returned, over all their loops."""
    own = (
        plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1)
        if plan.get("Alias") == alias
        else 0
    )
    return float(own) + sum(_rows_read(child, alias) for child in plan.get("Plans", []))


def test_a_lone_chain_reads_the_resources_of_its_page_only(db: Database) -> None:
    """ADR 22, stop 15: ``Observation?subject:Patient.family=Ni`` at 1,000,000
    resources (2,504 Patients, 22,548 Observations) read every matching
    Observation's row (the policy filter) before sorting for a page of 50
    (0.2-0.6 s warm). The chain's references are now deduplicated and sorted
    from the reference index first; the Observations are then read in that
    order until the page is full."""
    if db.is_sqlite:
        pytest.skip("SQLite walks a chain in rowid order: test_fhir_search_plans")
    day = datetime(2026, 1, 1, tzinfo=UTC)
    resources: list[dict[str, Any]] = []
    strings: list[dict[str, Any]] = []
    references: list[dict[str, Any]] = []

    def resource(rid: int, res_type: str) -> dict[str, Any]:
        return {
            "rid": rid,
            "res_type": res_type,
            "res_id": f"{res_type[0]}{rid}",
            "version": 1,
            "org_id": "hosp-a",
            "patient_key": None,
            "category": "clinical",
            "deleted": False,
            "last_updated": day,
            "body": b"{}",
        }

    rid = 0
    for p in range(300):
        rid += 1
        patient = rid
        resources.append(resource(patient, "Patient"))
        family = f"{SYLLABLES[p % 5]}{SYLLABLES[p // 5 % 5]}{p}"
        strings.append(
            {"rid": patient, "res_type": "Patient", "param": "family", "norm": family, "exact": "x"}
        )
        for _ in range(10):
            rid += 1
            resources.append(resource(rid, "Observation"))
            references.append(
                {
                    "rid": rid,
                    "res_type": "Observation",
                    "param": "subject",
                    "target_type": "Patient",
                    "target_id": f"P{patient}",
                }
            )
    with db.engine.begin() as conn:
        conn.execute(insert(fhir_resources), resources)
        conn.execute(insert(fhir_idx_string), strings)
        conn.execute(insert(fhir_idx_reference), references)
        for table in ("fhir_resources", "fhir_idx_string", "fhir_idx_reference"):
            conn.exec_driver_sql(f"ANALYZE {table}")
    flt = RecordFilter(own_org="hosp-a")
    plan = SearchPlan(
        type_lookup(get_registry().params_for),
        lambda table: flt.where(searching._columns(table)),
    )
    params = [("subject:Patient.family", "Ni")]
    parsed = build_search(plan, "Observation", params, lenient=False)
    values: dict[str, Any] = flt.params()
    with db.engine.connect() as conn:
        query = searching._default_order(
            conn, plan, "Observation", parsed.conditions, values, flt.where(RESOURCE_COLUMNS)
        ).limit(5)
        page = [int(r) for r in conn.execute(query, values).scalars()]
        compiled = query.compile(conn)
        row = conn.exec_driver_sql(
            f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled}", compiled.construct_params(values)
        ).scalar_one()
    found = row if isinstance(row, list) else json.loads(row)
    family = {f"P{s['rid']}": str(s["norm"]) for s in strings}
    matching = [r["rid"] for r in references if family[r["target_id"]].startswith("ni")]
    assert len(matching) == 600
    assert page == sorted(matching)[:5]
    assert _rows_read(found[0]["Plan"], "fhir_resources") <= 5, found
