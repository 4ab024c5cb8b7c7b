"""pairs_in: composite-key lookups answered from an index on SQLite (a
row-value IN list scans the table there)."""

from __future__ import annotations

from sqlalchemy import create_engine, insert, select, tuple_

from salus.db import schema  # noqa: F401 - registers every table
from salus.db.keys import pairs_in
from salus.db.tables import fhir_idx_reference, fhir_resources, metadata


def _plan(engine: object, query: object) -> list[str]:
    compiled = query.compile(engine, compile_kwargs={"literal_binds": True})  # type: ignore[attr-defined]
    with engine.connect() as conn:  # type: ignore[attr-defined]
        return [str(row[3]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")]


def test_pairs_in_uses_the_composite_index_where_a_row_value_list_scans() -> None:
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    keys = [("Patient", "1"), ("Patient", "2"), ("Observation", "3")]
    R, ref = fhir_resources.c, fhir_idx_reference.c
    naive = _plan(engine, select(R.res_id).where(tuple_(R.res_type, R.res_id).in_(keys)))
    assert naive[0].startswith("SCAN fhir_resources")  # the trap this helper avoids
    for query in (
        select(R.res_id).where(pairs_in(R.res_type, R.res_id, keys)),
        select(ref.rid).where(pairs_in(ref.target_type, ref.target_id, keys)),
    ):
        plan = _plan(engine, query)
        assert not any(step.startswith("SCAN") for step in plan), plan
        assert any("target_id=?" in s or "res_id=?" in s for s in plan), plan


def test_pairs_in_matches_exactly_the_pairs() -> None:
    engine = create_engine("sqlite://")
    metadata.create_all(engine, tables=[fhir_idx_reference])
    ref = fhir_idx_reference
    rows = [
        {"rid": i, "res_type": "Observation", "param": "subject", "target_type": t, "target_id": n}
        for i, (t, n) in enumerate(
            [("Patient", "1"), ("Patient", "2"), ("Group", "1"), ("Patient", "3")], start=1
        )
    ]
    with engine.begin() as conn:
        conn.execute(insert(ref), rows)
        found = conn.execute(
            select(ref.c.rid)
            .where(pairs_in(ref.c.target_type, ref.c.target_id, [("Patient", "1"), ("Group", "1")]))
            .order_by(ref.c.rid)
        ).scalars()
        assert list(found) == [1, 3]
        nothing = conn.execute(
            select(ref.c.rid).where(pairs_in(ref.c.target_type, ref.c.target_id, []))
        )
        assert list(nothing) == []
