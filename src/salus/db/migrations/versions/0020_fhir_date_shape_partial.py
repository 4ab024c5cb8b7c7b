"""FHIR search: the date shape index holds only the rows its queries look for (ADR 8).

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-24

``ix_fhir_idx_date_shape`` (type, param, shape, high) answers two questions
(migration 0016): which resources have several values of a parameter, and
which values span more than a day. Both are ``shape <> 0``. The rows of one
value of at most a day (shape 0: a birth date, an Observation's time, every
``_lastUpdated``) were in the index all the same, and each new one dirtied a
page of it at a random place: 1.1 of the 14-16 pages a SQLite transaction
Bundle writes per resource (ADR 21, stop-18 amendment). The index becomes
partial, ``WHERE shape <> 0``. The queries that read it state ``shape <> 0``
with a literal 0, so that SQLite's planner, which looks for the terms of a
partial index's condition in the query, can use it; ``<>`` is no range of
the index, so the planner still seeks by ``shape IN (…)`` and ``high``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

_NAME = "ix_fhir_idx_date_shape"
_COLUMNS = ["res_type", "param", "shape", "high"]


def upgrade() -> None:
    op.drop_index(_NAME, table_name="fhir_idx_date")
    op.create_index(
        _NAME,
        "fhir_idx_date",
        _COLUMNS,
        unique=False,
        sqlite_where=sa.text("shape <> 0"),
        postgresql_where=sa.text("shape <> 0"),
    )


def downgrade() -> None:
    op.drop_index(_NAME, table_name="fhir_idx_date")
    op.create_index(_NAME, "fhir_idx_date", _COLUMNS, unique=False)
