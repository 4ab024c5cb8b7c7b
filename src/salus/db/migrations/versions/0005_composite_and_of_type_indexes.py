"""Search indexes for composite parameters and Identifier.type (:of-type).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from salus.db.types import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "fhir_idx_composite",
        sa.Column("rid", sa.BigInteger(), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("k_system", sa.String(length=255), nullable=True),
        sa.Column("k_code", sa.String(length=255), nullable=True),
        sa.Column("v_system", sa.String(length=255), nullable=True),
        sa.Column("v_code", sa.String(length=255), nullable=True),
        sa.Column("v_low", sa.Numeric(precision=38, scale=12), nullable=True),
        sa.Column("v_high", sa.Numeric(precision=38, scale=12), nullable=True),
        sa.Column("v_date_low", UTCDateTime(), nullable=True),
        sa.Column("v_date_high", UTCDateTime(), nullable=True),
        sa.Column("v_text", sa.String(length=255), nullable=True),
    )
    with op.batch_alter_table("fhir_idx_composite", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fhir_idx_composite_key", ["res_type", "param", "k_code"], unique=False
        )
        batch_op.create_index("ix_fhir_idx_composite_rid", ["rid"], unique=False)

    with op.batch_alter_table("fhir_idx_token", schema=None) as batch_op:
        batch_op.add_column(sa.Column("type_system", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("type_code", sa.String(length=255), nullable=True))


def downgrade() -> None:

    with op.batch_alter_table("fhir_idx_token", schema=None) as batch_op:
        batch_op.drop_column("type_code")
        batch_op.drop_column("type_system")

    with op.batch_alter_table("fhir_idx_composite", schema=None) as batch_op:
        batch_op.drop_index("ix_fhir_idx_composite_rid")
        batch_op.drop_index("ix_fhir_idx_composite_key")

    op.drop_table("fhir_idx_composite")
