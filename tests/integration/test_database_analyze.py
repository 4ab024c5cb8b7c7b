"""Planner statistics: SQLite's are refreshed by Database.analyze (the server
runs it at start and every SALUS_DATABASE_ANALYZE_SECONDS); PostgreSQL keeps
its own (autovacuum)."""

from __future__ import annotations

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
