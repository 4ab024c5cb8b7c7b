"""SQLite query plans of a search's first page in the default order (FHIR
search.html#count; ADR 8): the page must come from an index walk that stops
early, never from collecting and sorting every match ("USE TEMP B-TREE FOR
ORDER BY"). Checked with EXPLAIN QUERY PLAN on an in-memory database holding
a few index rows (the conditions are made dense with DENSE_MATCHES)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import create_engine, event, insert
from sqlalchemy.engine import Connection

from salus.db import schema  # noqa: F401 - registers every table
from salus.db.tables import (
    fhir_idx_date,
    fhir_idx_reference,
    fhir_idx_string,
    fhir_idx_token,
    metadata,
)
from salus.fhir import searching
from salus.fhir.query import SearchPlan, build_search, type_lookup
from salus.fhir.search import get_registry
from salus.fhir.store import RESOURCE_COLUMNS
from salus.security.policy import RecordFilter

LOINC = "http://loinc.org"


@pytest.fixture(scope="module")
def conn() -> Iterator[Connection]:
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    day = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as connection:
        for rid in (1, 2):
            connection.execute(
                insert(fhir_idx_token).values(
                    rid=rid, res_type="Observation", param="code", system=LOINC, code="8867-4"
                )
            )
            connection.execute(
                insert(fhir_idx_date).values(
                    rid=rid, res_type="Observation", param="date", low=day, high=day, shape=0
                )
            )
        connection.execute(
            insert(fhir_idx_reference).values(
                rid=1, res_type="Observation", param="subject", target_type="Patient", target_id="p"
            )
        )
        connection.execute(
            insert(fhir_idx_string).values(
                rid=3, res_type="Patient", param="family", norm="le", exact="Lê"
            )
        )
    with engine.connect() as connection:
        yield connection


def _plan(conn: Connection, res_type: str, params: Sequence[tuple[str, str]]) -> list[str]:
    flt = RecordFilter(own_org="hosp-a")
    plan = SearchPlan(
        type_lookup(get_registry().params_for),
        lambda table: flt.where(searching._columns(table)),
    )
    parsed = build_search(plan, res_type, params, lenient=False)
    values: dict[str, Any] = flt.params()
    query = searching._default_order(
        conn, plan, res_type, parsed.conditions, values, flt.where(RESOURCE_COLUMNS)
    ).limit(20)

    # Executed as SQLAlchemy executes it (IN lists expanded), but explained.
    def explain(*args: Any) -> tuple[str, Any]:
        return f"EXPLAIN QUERY PLAN {args[2]}", args[3]

    event.listen(conn, "before_cursor_execute", explain, retval=True)
    try:
        return [str(row[3]) for row in conn.execute(query, values)]
    finally:
        event.remove(conn, "before_cursor_execute", explain)


@pytest.fixture
def dense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(searching, "DENSE_MATCHES", 2)


def test_a_token_code_is_read_in_rid_order_from_its_index(conn: Connection, dense: None) -> None:
    plan = _plan(conn, "Observation", [("code", f"{LOINC}|8867-4")])
    assert plan[0].startswith("SEARCH fhir_idx_token USING COVERING INDEX ix_fhir_idx_token_code")
    assert not any("ORDER BY" in step for step in plan), plan


def test_a_dense_date_walks_the_resources_in_rowid_order(conn: Connection, dense: None) -> None:
    plan = _plan(conn, "Observation", [("date", "ge2025-06-01"), ("_count", "20")])
    assert plan[0] == "SCAN fhir_resources", plan
    assert any("fhir_idx_date USING INDEX ix_fhir_idx_date_rid (rid=?)" in s for s in plan), plan
    assert not any("ORDER BY" in step for step in plan), plan


@pytest.fixture(scope="module")
def dated() -> Iterator[Connection]:
    """400 Observations with one date each (shape 0) and 4 with several (shape 1),
    ANALYZEd: the shape index holds the 8 rows of the 4."""
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    day = datetime(2026, 1, 1, tzinfo=UTC)
    row = {"res_type": "Observation", "param": "date"}
    rows: list[dict[str, Any]] = [
        {**row, "rid": rid, "low": day, "high": day, "shape": 0} for rid in range(1, 401)
    ]
    rows += [
        {**row, "rid": rid, "low": d, "high": d, "shape": 1}
        for rid in range(401, 405)
        for d in (day, datetime(2024, 1, 1, tzinfo=UTC))
    ]
    with engine.begin() as connection:
        connection.execute(insert(fhir_idx_date), rows)
        connection.exec_driver_sql("ANALYZE")
    with engine.connect() as connection:
        yield connection


@pytest.fixture(scope="module")
def sampled() -> Iterator[Connection]:
    """The statistics ANALYZE with ``analysis_limit`` (salus.db.engine) wrote for
    ``fhir_idx_date`` at 1,000,000 resources (stop 18): a few hundred rows per
    type, where there are a million; 146 rows in the partial shape index."""
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    stats = {
        "ix_fhir_idx_date_low": "1825956 334 201 6 1",
        "ix_fhir_idx_date_high": "1825956 334 201 8 1",
        "ix_fhir_idx_date_shape": "146 73 73 73 2",
        "ix_fhir_idx_date_rid": "2732699 2",
    }
    with engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE")  # creates sqlite_stat1
        connection.exec_driver_sql("DELETE FROM sqlite_stat1")
        for index, stat in stats.items():
            connection.exec_driver_sql(
                "INSERT INTO sqlite_stat1 VALUES ('fhir_idx_date', ?, ?)", (index, stat)
            )
        connection.exec_driver_sql("ANALYZE sqlite_schema")  # the planner reads them again
    with engine.connect() as connection:
        yield connection


def test_a_date_range_reads_several_values_from_the_partial_index(
    dated: Connection, sampled: Connection
) -> None:
    """Migration 0020: ``ix_fhir_idx_date_shape`` holds only the rows with
    ``shape <> 0`` (several values, or more than a day). A range (``date=geX&
    date=ltY``) looks for those in it, and states the index's condition so that
    SQLite can use it; the seek is by shape and ``high``. The values' own
    bounds are no index there (``+low``), so that with sampled statistics too
    SQLite does not scan the low index below a date instead (1.3 s a query at
    1,000,000 resources)."""
    for conn in (dated, sampled):
        plan = _plan(conn, "Observation", [("date", "ge2025-06-01"), ("date", "lt2026-06-01")])
        shaped = [step for step in plan if "ix_fhir_idx_date_shape" in step]
        # The long values, and the two sides of the INTERSECT of several values.
        assert len(shaped) == 3, plan
        assert all("shape=?" in step for step in shaped), plan
        # No scan of the low index below the end (half the rows); the first
        # part reads the range's own entries (bounded both ways).
        below = "USING INDEX ix_fhir_idx_date_low (res_type=? AND param=? AND low<?)"
        assert not any(step.endswith(below) for step in plan), plan


def test_a_sparse_reference_drives_and_the_dense_token_is_probed(
    conn: Connection, dense: None
) -> None:
    plan = _plan(conn, "Observation", [("subject", "Patient/p"), ("code", f"{LOINC}|8867-4")])
    assert any("fhir_idx_reference USING" in s and "target_id=?" in s for s in plan), plan
    probe = [s for s in plan if "fhir_idx_token" in s]
    assert probe and "rid=?" in probe[0], plan
    assert not any(step.startswith("SCAN") for step in plan), plan


def test_string_prefixes_and_chains_start_from_the_string_index(conn: Connection) -> None:
    for res_type, params in (
        ("Patient", [("family", "Lê")]),
        ("Observation", [("subject:Patient.family", "Le")]),
    ):
        plan = _plan(conn, res_type, params)
        assert any(
            "ix_fhir_idx_string_norm (res_type=? AND param=? AND norm>? AND norm<?)" in s
            for s in plan
        ), plan
        assert not any(step.startswith("SCAN") for step in plan), plan


def _explain(conn: Connection, query: Any, values: dict[str, Any]) -> list[str]:
    compiled = query.compile(conn)
    full = compiled.construct_params(values)
    args = tuple(full[name] for name in compiled.positiontup or ())
    return [str(row[3]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", args)]


def test_a_chain_that_many_targets_meet_walks_and_probes_per_resource(conn: Connection) -> None:
    """ADR 22, stop 15: a lone chain whose targets' condition has
    ``CHAIN_WALK_TARGETS`` index rows (``family=N``: 10,032 Patients at
    1,000,000) walks the resources in rowid order from the type's first (at most
    ``CHAIN_WALK_BUDGET`` rowids) and probes the chain per resource by rid (reference,
    target, the target's string), never collecting the matching targets first
    ("LIST SUBQUERY": 10,032 Patient rows read)."""
    flt = RecordFilter(own_org="hosp-a")
    plan = SearchPlan(
        type_lookup(get_registry().params_for),
        lambda table: flt.where(searching._columns(table)),
    )
    parsed = build_search(plan, "Observation", [("subject:Patient.family", "Le")], lenient=False)
    (chain,) = parsed.conditions
    assert plan.targets_at_least(conn, chain, 1)
    query = searching.chain_walk(plan, "Observation", chain, flt.where(RESOURCE_COLUMNS)).limit(20)
    plan_rows = _explain(conn, query, flt.params())
    assert plan_rows[0] == "SEARCH fhir_resources USING INTEGER PRIMARY KEY (rowid<?)", plan_rows
    assert "SCAN walked" in plan_rows, plan_rows  # the type's first rid, in rowid order
    for probe in (
        "chain_ref1 USING INDEX ix_fhir_idx_reference_rid (rid=?)",
        "chained1 USING INDEX",  # the unique (res_type, res_id)
        "(res_type=? AND res_id=?)",
        "fhir_idx_string USING INDEX ix_fhir_idx_string_rid (rid=?)",
    ):
        assert any(probe in step for step in plan_rows), (probe, plan_rows)
    assert not any("LIST SUBQUERY" in s or "ORDER BY" in s for s in plan_rows), plan_rows


def _count_plan(conn: Connection, res_type: str, params: Sequence[tuple[str, str]]) -> list[str]:
    """The plan of the count that decides sparse or dense (ADR 22), for the
    search's one index condition."""
    flt = RecordFilter(own_org="hosp-a")
    plan = SearchPlan(
        type_lookup(get_registry().params_for),
        lambda table: flt.where(searching._columns(table)),
    )
    parsed = build_search(plan, res_type, params, lenient=False)
    (condition,) = parsed.conditions
    compiled = plan.count_query(condition, searching.DENSE_MATCHES).compile(conn)
    full = compiled.construct_params(flt.params())
    args = tuple(full[name] for name in compiled.positiontup or ())
    return [str(row[3]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", args)]


@pytest.mark.parametrize(
    ("res_type", "params", "indexes"),
    [
        ("Observation", [("date", "ge2025-06-01")], ["ix_fhir_idx_date_high"]),
        ("Observation", [("date", "le2025-06-01")], ["ix_fhir_idx_date_low"]),
        ("Patient", [("family", "Lê")], ["ix_fhir_idx_string_norm"]),
        ("Observation", [("subject", "Patient/p")], ["ix_fhir_idx_reference_target"]),
        (
            "Observation",
            [("subject:Patient.family", "Le")],
            ["ix_fhir_idx_string_norm", "ix_fhir_idx_reference_target"],
        ),
    ],
)
def test_index_conditions_are_counted_from_their_index_alone(
    conn: Connection, res_type: str, params: Sequence[tuple[str, str]], indexes: list[str]
) -> None:
    """Migration 0019: the rids of a date, string or reference condition come from
    its index (covering: the rid is its last column), never from a lookup of the
    index table's row per entry (counting 2,000 date entries read 1,300-2,100
    pages of fhir_idx_date at 1,000,000 resources)."""
    plan = _count_plan(conn, res_type, params)
    for index in indexes:
        assert any(f"USING COVERING INDEX {index} " in step for step in plan), plan
    # The only scan is of the LIMITed sub-query's rows (SQLite's co-routine).
    assert [step for step in plan if step.startswith("SCAN")] == ["SCAN anon_1"], plan


@pytest.mark.parametrize(
    ("value", "index"),
    [
        ("ge2025-06-01", "ix_fhir_idx_date_high"),
        ("gt2025-06-01", "ix_fhir_idx_date_high"),
        ("eb2025-06-01", "ix_fhir_idx_date_high"),
        ("le2025-06-01", "ix_fhir_idx_date_low"),
        ("lt2025-06-01", "ix_fhir_idx_date_low"),
        ("sa2025-06-01", "ix_fhir_idx_date_low"),
    ],
)
def test_a_one_sided_date_is_tested_from_the_end_of_its_index(
    conn: Connection, value: str, index: str
) -> None:
    """ADR 22, stop 16 (rule 10): whether ``date=geX`` is dense is read from the
    end of the date index (the ``n``-th highest ``high``), index only and in the
    index's order (no sort): the same pages for every date. The count it
    replaces read ``n`` entries from X upward, a random place of the index
    (16-29 pages per query at 1,000,000 resources)."""
    flt = RecordFilter(own_org="hosp-a")
    plan = SearchPlan(
        type_lookup(get_registry().params_for),
        lambda table: flt.where(searching._columns(table)),
    )
    parsed = build_search(plan, "Observation", [("date", value)], lenient=False)
    (condition,) = parsed.conditions
    compiled = plan.edge_query(condition, searching.DENSE_MATCHES).compile(conn)
    args = tuple(compiled.params[name] for name in compiled.positiontup or ())
    steps = [str(row[3]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", args)]
    assert any(f"USING COVERING INDEX {index} (res_type=? AND param=?)" in s for s in steps), steps
    assert not any("TEMP B-TREE" in s for s in steps), steps
    # The two rows of the fixture are on 2026-01-01: after the date, not before.
    assert plan.matches_at_least(conn, condition, 2) is (value[:2] in ("ge", "gt", "sa"))
