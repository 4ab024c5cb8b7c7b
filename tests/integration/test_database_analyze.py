"""Planner statistics: SQLite's are refreshed by Database.analyze (the server
runs it at start and every SALUS_DATABASE_ANALYZE_SECONDS); PostgreSQL keeps
its own (autovacuum)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from salus.db.engine import Database


def test_analyze_writes_sqlite_statistics_for_the_search_indexes(db: Database) -> None:
    if not db.is_sqlite:
        assert db.analyze() is False
        return
    with db.write() as conn:
        conn.execute(
            text(
                "INSERT INTO fhir_idx_reference (rid, res_type, param, target_type, target_id)"
                " VALUES (1, 'Observation', 'subject', 'Patient', 'p1'),"
                " (2, 'Observation', 'subject', 'Patient', 'p2')"
            )
        )
    assert db.analyze() is True
    with db.read() as conn:
        indexes = {
            str(row[0])
            for row in conn.execute(
                text("SELECT idx FROM sqlite_stat1 WHERE tbl = 'fhir_idx_reference'")
            )
        }
    assert "ix_fhir_idx_reference_target" in indexes


def test_pooled_connections_plan_with_the_new_statistics(db: Database) -> None:
    """A connection opened before ANALYZE keeps the statistics it loaded; the
    pool must not hand such a connection out afterwards."""
    if not db.is_sqlite:
        pytest.skip("SQLite only: PostgreSQL's statistics are in its catalog, shared by all")
    with db.write() as conn:
        conn.execute(text("CREATE TABLE skew (a INTEGER, b INTEGER)"))
        conn.execute(text("CREATE INDEX ix_skew_b ON skew (b)"))
        conn.execute(text("CREATE INDEX ix_skew_a ON skew (a)"))
        conn.execute(
            text(
                "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 2999)"
                " INSERT INTO skew SELECT i, i % 2 FROM n"
            )
        )
    plan_sql = text("EXPLAIN QUERY PLAN SELECT * FROM skew WHERE a > 5 AND b = 1")
    # Open (and return to the pool) several connections before the statistics exist.
    with db.read() as c1, db.read() as c2:
        before = {str(row[3]) for row in c1.execute(plan_sql)}
        c2.execute(plan_sql).fetchall()
    assert any("ix_skew_b" in step for step in before)  # without statistics: b = ? looks best
    assert db.analyze() is True
    for _ in range(3):
        with db.read() as conn:
            after = {str(row[3]) for row in conn.execute(plan_sql)}
        assert any("ix_skew_a" in step for step in after), after
