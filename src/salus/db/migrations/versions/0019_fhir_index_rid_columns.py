"""FHIR search: the date, string and reference indexes end with the rid (ADR 22).

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-23

A search parameter is ``rid IN (SELECT rid FROM index table WHERE …)`` and the
first page is planned by counting up to 2,000 of those rows (ADR 22). Without
the rid in the index each row found costs a lookup of the index table's own
row, at a random place: counting 2,000 rows of ``Observation?date=geX`` read
1,300-2,100 pages on SQLite at 1,000,000 resources (0.4-1.3 s when the pages
are not cached). With the rid as the last column the index alone answers
(SQLite: covering index; PostgreSQL: index-only scan). Rebuilt:
``ix_fhir_idx_date_low``, ``ix_fhir_idx_date_high``, ``ix_fhir_idx_string_norm``
(still ``varchar_pattern_ops`` on PostgreSQL, migration 0017) and
``ix_fhir_idx_reference_target`` (which chains and ``subject=`` read).
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

_INDEXES = {
    "ix_fhir_idx_date_low": ("fhir_idx_date", ["res_type", "param", "low"]),
    "ix_fhir_idx_date_high": ("fhir_idx_date", ["res_type", "param", "high"]),
    "ix_fhir_idx_string_norm": ("fhir_idx_string", ["res_type", "param", "norm"]),
    "ix_fhir_idx_reference_target": (
        "fhir_idx_reference",
        ["res_type", "param", "target_type", "target_id"],
    ),
}


def _rebuild(with_rid: bool) -> None:
    for name, (table, columns) in _INDEXES.items():
        op.drop_index(name, table_name=table)
        ops = {"norm": "varchar_pattern_ops"} if table == "fhir_idx_string" else {}
        op.create_index(
            name,
            table,
            [*columns, "rid"] if with_rid else columns,
            unique=False,
            postgresql_ops=ops,
        )


def upgrade() -> None:
    _rebuild(with_rid=True)


def downgrade() -> None:
    _rebuild(with_rid=False)
