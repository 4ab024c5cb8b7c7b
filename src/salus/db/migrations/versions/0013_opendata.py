"""Open data: publication records and their files; indicator snapshots (schedule).

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from salus.db.types import UTCDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "opendata_publications",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("licence", sa.String(64), nullable=False),
        sa.Column("publisher", sa.String(200), nullable=False),
        sa.Column("publisher_org", sa.String(64), nullable=False),
        sa.Column("published_by", sa.String(120), nullable=False),
        sa.Column("published_at", UTCDateTime, nullable=False),
        sa.Column("indicators", sa.JSON, nullable=False),
        sa.Column("periods", sa.JSON, nullable=False),
        sa.Column("min_cell", sa.Integer, nullable=False),
        sa.Column("cells", sa.Integer, nullable=False),
        sa.Column("suppressed", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_opendata_publications"),
    )
    op.create_index(
        "ix_opendata_publications_published_at", "opendata_publications", ["published_at"]
    )
    op.create_table(
        "opendata_files",
        sa.Column("publication_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(120), nullable=False),
        sa.Column("media_type", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("publication_id", "name", name="pk_opendata_files"),
    )
    op.create_table(
        "indicator_snapshots",
        sa.Column("indicator", sa.String(64), nullable=False),
        sa.Column("version", sa.String(16), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("cells", sa.Integer, nullable=False),
        sa.Column("computed_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("indicator", name="pk_indicator_snapshots"),
    )


def downgrade() -> None:
    op.drop_table("indicator_snapshots")
    op.drop_table("opendata_files")
    op.drop_index("ix_opendata_publications_published_at", table_name="opendata_publications")
    op.drop_table("opendata_publications")
