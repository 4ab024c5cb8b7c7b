"""Warehouse: operational dataset submissions and their accepted rows.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from salus.db.types import BigIntPK, UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dataset_submissions",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("dataset", sa.String(32), nullable=False),
        sa.Column("schema_version", sa.String(16), nullable=False),
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("replaced", sa.Integer, nullable=False),
        sa.Column("resources", sa.Integer, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("submitted_by", sa.String(120), nullable=False),
        sa.Column("submitted_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dataset_submissions"),
    )
    op.create_index(
        "ix_dataset_submissions_org", "dataset_submissions", ["dataset", "org_id", "period"]
    )
    op.create_table(
        "dataset_rows",
        sa.Column("id", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("submission_id", sa.String(36), nullable=False),
        sa.Column("dataset", sa.String(32), nullable=False),
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("row_key", sa.String(300), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("resource_ids", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dataset_rows"),
    )
    op.create_index(
        "ux_dataset_rows_key",
        "dataset_rows",
        ["dataset", "org_id", "period", "row_key"],
        unique=True,
    )
    op.create_index("ix_dataset_rows_submission", "dataset_rows", ["submission_id"])


def downgrade() -> None:
    op.drop_index("ix_dataset_rows_submission", table_name="dataset_rows")
    op.drop_index("ux_dataset_rows_key", table_name="dataset_rows")
    op.drop_table("dataset_rows")
    op.drop_index("ix_dataset_submissions_org", table_name="dataset_submissions")
    op.drop_table("dataset_submissions")
