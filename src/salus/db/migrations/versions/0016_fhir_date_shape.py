"""FHIR search: the shape of date index rows, for date ranges on one row (ADR 8).

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-23

``fhir_idx_date.shape``: bit 1 when the resource has several values of the
parameter, bit 2 when the value spans more than a day. A range
(``date=geX&date=ltY``) is answered on one index row for the others (FHIR
search.html: repeated parameters are ANDed, and each may match a different
value of a multi-valued element). Existing rows are classified here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

#: Existing rows: bit 1 when the resource has several values of the parameter,
#: bit 2 when the value spans more than a day (as salus.fhir.indexing sets them).
_CLASSIFY_PG = """
UPDATE fhir_idx_date SET shape =
    (CASE WHEN (SELECT count(*) FROM fhir_idx_date other
                WHERE other.rid = fhir_idx_date.rid AND other.param = fhir_idx_date.param) > 1
          THEN 1 ELSE 0 END)
    + (CASE WHEN fhir_idx_date.high - fhir_idx_date.low > interval '1 day' THEN 2 ELSE 0 END)
"""
_CLASSIFY_SQLITE = """
UPDATE fhir_idx_date SET shape =
    (CASE WHEN (SELECT count(*) FROM fhir_idx_date other
                WHERE other.rid = fhir_idx_date.rid AND other.param = fhir_idx_date.param) > 1
          THEN 1 ELSE 0 END)
    + (CASE WHEN julianday(fhir_idx_date.high) - julianday(fhir_idx_date.low) > 1
            THEN 2 ELSE 0 END)
"""


def upgrade() -> None:
    with op.batch_alter_table("fhir_idx_date", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("shape", sa.SmallInteger(), nullable=False, server_default=sa.text("3"))
        )
        batch_op.create_index(
            "ix_fhir_idx_date_shape", ["res_type", "param", "shape", "high"], unique=False
        )
    op.execute(_CLASSIFY_PG if op.get_bind().dialect.name == "postgresql" else _CLASSIFY_SQLITE)


def downgrade() -> None:
    with op.batch_alter_table("fhir_idx_date", schema=None) as batch_op:
        batch_op.drop_index("ix_fhir_idx_date_shape")
        batch_op.drop_column("shape")
