"""FHIR Bulk Data export requests (Bulk Data Access IG v2, export.html).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from salus.db.types import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bulk_exports",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("owner_kind", sa.String(10), nullable=False),
        sa.Column("owner_id", sa.String(100), nullable=False),
        sa.Column("owner_org", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("level", sa.String(10), nullable=False),
        sa.Column("request_url", sa.Text, nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("job_id", sa.BigInteger),
        sa.Column("progress", sa.String(200)),
        sa.Column("transaction_time", UTCDateTime),
        sa.Column("error", sa.Text),
        sa.Column("manifest", sa.JSON),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_bulk_exports"),
    )
    op.create_index("ix_bulk_exports_owner", "bulk_exports", ["owner_kind", "owner_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_bulk_exports_owner", table_name="bulk_exports")
    op.drop_table("bulk_exports")
