"""FHIR Bulk Data import: uploaded NDJSON files and import requests.

Revision ID: 0009
Revises: 0007
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from salus.db.types import UTCDateTime

revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bulk_imports",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("owner_kind", sa.String(10), nullable=False),
        sa.Column("owner_id", sa.String(100), nullable=False),
        sa.Column("owner_org", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request_url", sa.Text, nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("job_id", sa.BigInteger),
        sa.Column("progress", sa.String(200)),
        sa.Column("cursor", sa.JSON),
        sa.Column("transaction_time", UTCDateTime),
        sa.Column("error", sa.Text),
        sa.Column("result", sa.JSON),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_bulk_imports"),
    )
    op.create_index(
        "ix_bulk_imports_owner", "bulk_imports", ["owner_kind", "owner_id", "kind", "status"]
    )


def downgrade() -> None:
    op.drop_index("ix_bulk_imports_owner", table_name="bulk_imports")
    op.drop_table("bulk_imports")
