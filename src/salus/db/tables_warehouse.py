"""Table definitions of the warehouse (SQLAlchemy Core), on the shared MetaData.

``warehouse_views`` holds the stored ViewDefinitions (SQL-on-FHIR v2; not an
R4 resource type, so they live here rather than in ``fhir_resources``) and,
per view, the state of its materialization: the Parquet parts (blobs in the
encrypted blob store, listed in ``manifest``), the watermark of the last run
(``last_updated`` and ``rid`` of the last resource read, keyset order) and
a ``generation`` bumped by every run (compare-and-set: two runs of one view
never both commit). ``view_exports`` tracks the asynchronous
``ViewDefinition/$export`` requests like ``bulk_exports`` does for FHIR.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, String, Table, Text

from salus.db.tables import metadata
from salus.db.types import UTCDateTime

__all__ = ["metadata", "view_exports", "warehouse_views"]

warehouse_views = Table(
    "warehouse_views",
    metadata,
    Column("id", String(64), primary_key=True),  # the FHIR id, also the table name
    Column("name", String(64), nullable=False, unique=True),  # ViewDefinition.name
    Column("resource_type", String(64), nullable=False),
    Column("definition", JSON, nullable=False),
    Column("version", Integer, nullable=False),
    Column("owner_org", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # materialization
    Column("generation", Integer, nullable=False),
    Column("manifest", JSON),  # {"parts": [{"digest", "rows", "min_rid", "max_rid"}], ...}
    Column("watermark_updated", UTCDateTime),
    Column("watermark_rid", BigInteger),
    Column("row_count", BigInteger, nullable=False),
    Column("materialized_at", UTCDateTime),
    Column("definition_version", Integer),  # the version the parts were built from
)

view_exports = Table(
    "view_exports",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("owner_kind", String(10), nullable=False),
    Column("owner_id", String(100), nullable=False),
    Column("owner_org", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("request_url", Text, nullable=False),
    Column("params", JSON, nullable=False),
    Column("job_id", BigInteger),
    Column("progress", String(200)),
    Column("error", Text),
    Column("manifest", JSON),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
Index(
    "ix_view_exports_owner",
    view_exports.c.owner_kind,
    view_exports.c.owner_id,
    view_exports.c.status,
)
