"""The durable job queue.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from salus.db.types import BigIntPK, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(100), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.SmallInteger, nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("run_at", UTCDateTime, nullable=False),
        sa.Column("locked_by", sa.String(100)),
        sa.Column("locked_until", UTCDateTime),
        sa.Column("last_error", sa.Text),
        sa.Column("dedup_key", sa.String(200)),
        sa.Column("tenant", sa.String(64)),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.UniqueConstraint("dedup_key", name="uq_jobs_dedup_key"),
    )
    op.create_index("ix_jobs_due", "jobs", ["status", "run_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_due", table_name="jobs")
    op.drop_table("jobs")
