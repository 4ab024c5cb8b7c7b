"""DICOM: Request Attributes Sequence items of each series, for sequence matching.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dicom_series_requests",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("series_pk", sa.BigInteger(), nullable=False),
        sa.Column("requested_procedure_id", sa.String(length=16), nullable=False),
        sa.Column("scheduled_step_id", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["series_pk"],
            ["dicom_series.pk"],
            name=op.f("fk_dicom_series_requests_series_pk_dicom_series"),
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_dicom_series_requests")),
        sa.UniqueConstraint(
            "series_pk",
            "requested_procedure_id",
            "scheduled_step_id",
            name="uq_dicom_series_requests_keys",
        ),
    )
    op.create_index(
        "ix_dicom_series_requests_procedure",
        "dicom_series_requests",
        ["requested_procedure_id"],
        unique=False,
    )
    op.create_index(
        "ix_dicom_series_requests_step",
        "dicom_series_requests",
        ["scheduled_step_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_dicom_series_requests_step", table_name="dicom_series_requests")
    op.drop_index("ix_dicom_series_requests_procedure", table_name="dicom_series_requests")
    op.drop_table("dicom_series_requests")
