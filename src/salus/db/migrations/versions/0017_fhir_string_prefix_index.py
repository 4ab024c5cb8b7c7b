"""FHIR search: string prefixes from the index on PostgreSQL whatever its collation (ADR 8).

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-23

A string search (search.html#string: "starts with") is ``norm LIKE 'x%'``.
PostgreSQL uses a B-tree index for it only under the ``C`` collation or with a
pattern operator class; databases created with ``C.UTF-8`` or a language
collation scanned every value of the parameter (``Patient?family=`` read
100,000 rows at 1,000,000 resources). The index is rebuilt with
``varchar_pattern_ops`` (which also serves equality). SQLite: unchanged (its
prefix searches use the index through the code-point range added beside
``LIKE``, salus.fhir.query).
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_COLUMNS = ["res_type", "param", "norm"]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_fhir_idx_string_norm", table_name="fhir_idx_string")
    op.create_index(
        "ix_fhir_idx_string_norm",
        "fhir_idx_string",
        _COLUMNS,
        unique=False,
        postgresql_ops={"norm": "varchar_pattern_ops"},
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_fhir_idx_string_norm", table_name="fhir_idx_string")
    op.create_index("ix_fhir_idx_string_norm", "fhir_idx_string", _COLUMNS, unique=False)
