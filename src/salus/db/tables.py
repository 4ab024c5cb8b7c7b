"""Table definitions (SQLAlchemy Core). Migrations create them; a test checks
that the migrated schema and these definitions agree on both backends."""

from __future__ import annotations

from sqlalchemy import JSON, Column, Index, Integer, MetaData, SmallInteger, String, Table, Text

from salus.db.types import BigIntPK, UTCDateTime

__all__ = ["jobs", "metadata"]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: The durable job queue (see :mod:`salus.jobs.queue`).
jobs = Table(
    "jobs",
    metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("kind", String(100), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("priority", SmallInteger, nullable=False, server_default="0"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False),
    Column("run_at", UTCDateTime, nullable=False),
    Column("locked_by", String(100)),
    Column("locked_until", UTCDateTime),
    Column("last_error", Text),
    Column("dedup_key", String(200), unique=True),
    Column("tenant", String(64)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
)
Index("ix_jobs_due", jobs.c.status, jobs.c.run_at)
