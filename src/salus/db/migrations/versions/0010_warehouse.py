"""Warehouse: stored ViewDefinitions with their materialization state, view exports.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from salus.db.types import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "warehouse_views",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("definition", sa.JSON, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("owner_org", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("manifest", sa.JSON),
        sa.Column("watermark_updated", UTCDateTime),
        sa.Column("watermark_rid", sa.BigInteger),
        sa.Column("row_count", sa.BigInteger, nullable=False),
        sa.Column("materialized_at", UTCDateTime),
        sa.Column("definition_version", sa.Integer),
        sa.PrimaryKeyConstraint("id", name="pk_warehouse_views"),
        sa.UniqueConstraint("name", name="uq_warehouse_views_name"),
    )
    op.create_table(
        "view_exports",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("owner_kind", sa.String(10), nullable=False),
        sa.Column("owner_id", sa.String(100), nullable=False),
        sa.Column("owner_org", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request_url", sa.Text, nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("job_id", sa.BigInteger),
        sa.Column("progress", sa.String(200)),
        sa.Column("error", sa.Text),
        sa.Column("manifest", sa.JSON),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_view_exports"),
    )
    op.create_index("ix_view_exports_owner", "view_exports", ["owner_kind", "owner_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_view_exports_owner", table_name="view_exports")
    op.drop_table("view_exports")
    op.drop_table("warehouse_views")
