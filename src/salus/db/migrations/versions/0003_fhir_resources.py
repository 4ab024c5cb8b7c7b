"""FHIR resources, their history and the search index tables.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from salus.db.types import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "fhir_history",
        sa.Column("rid", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.Column("org_id", sa.String(length=64), nullable=False),
        sa.Column("patient_key", sa.String(length=64), nullable=True),
        sa.Column("category", sa.String(length=64), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("method", sa.String(length=6), nullable=False),
        sa.Column("last_updated", UTCDateTime(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("rid", "version", name=op.f("pk_fhir_history")),
    )
    with op.batch_alter_table("fhir_history", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fhir_history_type_updated", ["res_type", "last_updated"], unique=False
        )
        batch_op.create_index("ix_fhir_history_updated", ["last_updated"], unique=False)

    op.create_table(
        "fhir_idx_date",
        sa.Column("rid", sa.BigInteger(), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("low", UTCDateTime(), nullable=False),
        sa.Column("high", UTCDateTime(), nullable=False),
    )
    with op.batch_alter_table("fhir_idx_date", schema=None) as batch_op:
        batch_op.create_index("ix_fhir_idx_date_high", ["res_type", "param", "high"], unique=False)
        batch_op.create_index("ix_fhir_idx_date_low", ["res_type", "param", "low"], unique=False)
        batch_op.create_index("ix_fhir_idx_date_rid", ["rid"], unique=False)

    op.create_table(
        "fhir_idx_number",
        sa.Column("rid", sa.BigInteger(), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("low", sa.Numeric(precision=38, scale=12), nullable=False),
        sa.Column("high", sa.Numeric(precision=38, scale=12), nullable=False),
    )
    with op.batch_alter_table("fhir_idx_number", schema=None) as batch_op:
        batch_op.create_index("ix_fhir_idx_number_low", ["res_type", "param", "low"], unique=False)
        batch_op.create_index("ix_fhir_idx_number_rid", ["rid"], unique=False)

    op.create_table(
        "fhir_idx_quantity",
        sa.Column("rid", sa.BigInteger(), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("system", sa.String(length=255), nullable=True),
        sa.Column("code", sa.String(length=255), nullable=True),
        sa.Column("low", sa.Numeric(precision=38, scale=12), nullable=False),
        sa.Column("high", sa.Numeric(precision=38, scale=12), nullable=False),
    )
    with op.batch_alter_table("fhir_idx_quantity", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fhir_idx_quantity_code", ["res_type", "param", "code", "low"], unique=False
        )
        batch_op.create_index("ix_fhir_idx_quantity_rid", ["rid"], unique=False)

    op.create_table(
        "fhir_idx_reference",
        sa.Column("rid", sa.BigInteger(), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=64), nullable=True),
        sa.Column("target_id", sa.String(length=64), nullable=True),
        sa.Column("url", sa.String(length=1024), nullable=True),
    )
    with op.batch_alter_table("fhir_idx_reference", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fhir_idx_reference_reverse", ["target_type", "target_id"], unique=False
        )
        batch_op.create_index("ix_fhir_idx_reference_rid", ["rid"], unique=False)
        batch_op.create_index(
            "ix_fhir_idx_reference_target",
            ["res_type", "param", "target_type", "target_id"],
            unique=False,
        )

    op.create_table(
        "fhir_idx_string",
        sa.Column("rid", sa.BigInteger(), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("norm", sa.String(length=255), nullable=False),
        sa.Column("exact", sa.String(length=255), nullable=False),
    )
    with op.batch_alter_table("fhir_idx_string", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fhir_idx_string_norm", ["res_type", "param", "norm"], unique=False
        )
        batch_op.create_index("ix_fhir_idx_string_rid", ["rid"], unique=False)

    op.create_table(
        "fhir_idx_token",
        sa.Column("rid", sa.BigInteger(), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("system", sa.String(length=255), nullable=True),
        sa.Column("code", sa.String(length=255), nullable=True),
        sa.Column("text", sa.String(length=255), nullable=True),
    )
    with op.batch_alter_table("fhir_idx_token", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fhir_idx_token_code", ["res_type", "param", "code", "system"], unique=False
        )
        batch_op.create_index("ix_fhir_idx_token_rid", ["rid"], unique=False)

    op.create_table(
        "fhir_idx_uri",
        sa.Column("rid", sa.BigInteger(), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=1024), nullable=False),
    )
    with op.batch_alter_table("fhir_idx_uri", schema=None) as batch_op:
        batch_op.create_index("ix_fhir_idx_uri_rid", ["rid"], unique=False)
        batch_op.create_index("ix_fhir_idx_uri_value", ["res_type", "param", "value"], unique=False)

    op.create_table(
        "fhir_resources",
        sa.Column(
            "rid",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.String(length=64), nullable=False),
        sa.Column("patient_key", sa.String(length=64), nullable=True),
        sa.Column("category", sa.String(length=64), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("last_updated", UTCDateTime(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("rid", name=op.f("pk_fhir_resources")),
        sa.UniqueConstraint("res_type", "res_id", name=op.f("uq_fhir_resources_res_type_res_id")),
    )
    with op.batch_alter_table("fhir_resources", schema=None) as batch_op:
        batch_op.create_index("ix_fhir_resources_patient", ["patient_key"], unique=False)
        batch_op.create_index(
            "ix_fhir_resources_type_updated", ["res_type", "last_updated"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("fhir_resources", schema=None) as batch_op:
        batch_op.drop_index("ix_fhir_resources_type_updated")
        batch_op.drop_index("ix_fhir_resources_patient")

    op.drop_table("fhir_resources")
    with op.batch_alter_table("fhir_idx_uri", schema=None) as batch_op:
        batch_op.drop_index("ix_fhir_idx_uri_value")
        batch_op.drop_index("ix_fhir_idx_uri_rid")

    op.drop_table("fhir_idx_uri")
    with op.batch_alter_table("fhir_idx_token", schema=None) as batch_op:
        batch_op.drop_index("ix_fhir_idx_token_rid")
        batch_op.drop_index("ix_fhir_idx_token_code")

    op.drop_table("fhir_idx_token")
    with op.batch_alter_table("fhir_idx_string", schema=None) as batch_op:
        batch_op.drop_index("ix_fhir_idx_string_rid")
        batch_op.drop_index("ix_fhir_idx_string_norm")

    op.drop_table("fhir_idx_string")
    with op.batch_alter_table("fhir_idx_reference", schema=None) as batch_op:
        batch_op.drop_index("ix_fhir_idx_reference_target")
        batch_op.drop_index("ix_fhir_idx_reference_rid")
        batch_op.drop_index("ix_fhir_idx_reference_reverse")

    op.drop_table("fhir_idx_reference")
    with op.batch_alter_table("fhir_idx_quantity", schema=None) as batch_op:
        batch_op.drop_index("ix_fhir_idx_quantity_rid")
        batch_op.drop_index("ix_fhir_idx_quantity_code")

    op.drop_table("fhir_idx_quantity")
    with op.batch_alter_table("fhir_idx_number", schema=None) as batch_op:
        batch_op.drop_index("ix_fhir_idx_number_rid")
        batch_op.drop_index("ix_fhir_idx_number_low")

    op.drop_table("fhir_idx_number")
    with op.batch_alter_table("fhir_idx_date", schema=None) as batch_op:
        batch_op.drop_index("ix_fhir_idx_date_rid")
        batch_op.drop_index("ix_fhir_idx_date_low")
        batch_op.drop_index("ix_fhir_idx_date_high")

    op.drop_table("fhir_idx_date")
    with op.batch_alter_table("fhir_history", schema=None) as batch_op:
        batch_op.drop_index("ix_fhir_history_updated")
        batch_op.drop_index("ix_fhir_history_type_updated")

    op.drop_table("fhir_history")
