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
from salus.db.types import BigIntPK, UTCDateTime

__all__ = [
    "dataset_rows",
    "dataset_submissions",
    "metadata",
    "view_exports",
    "warehouse_views",
]

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

# -- operational datasets (salus.warehouse.datasets) ----------------------------------
# ``dataset_submissions``: one row per accepted submission (refused ones are only
# audited). ``dataset_rows``: the accepted rows, typed, as JSON without the
# schema's personal columns, with the FHIR resources each produced; the key is
# unique per dataset, organization and period.
dataset_submissions = Table(
    "dataset_submissions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("dataset", String(32), nullable=False),
    Column("schema_version", String(16), nullable=False),
    Column("org_id", String(64), nullable=False),
    Column("period", String(7), nullable=False),
    Column("mode", String(8), nullable=False),
    Column("rows", Integer, nullable=False),
    Column("replaced", Integer, nullable=False),
    Column("resources", Integer, nullable=False),
    Column("digest", String(64), nullable=False),  # SHA-256 of the submitted bytes
    Column("submitted_by", String(120), nullable=False),
    Column("submitted_at", UTCDateTime, nullable=False),
)
Index(
    "ix_dataset_submissions_org",
    dataset_submissions.c.dataset,
    dataset_submissions.c.org_id,
    dataset_submissions.c.period,
)

dataset_rows = Table(
    "dataset_rows",
    metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("submission_id", String(36), nullable=False),
    Column("dataset", String(32), nullable=False),
    Column("org_id", String(64), nullable=False),
    Column("period", String(7), nullable=False),
    Column("row_key", String(300), nullable=False),
    Column("data", JSON, nullable=False),
    Column("resource_ids", JSON, nullable=False),  # ["Practitioner/ds-...", ...]
)
Index(
    "ux_dataset_rows_key",
    dataset_rows.c.dataset,
    dataset_rows.c.org_id,
    dataset_rows.c.period,
    dataset_rows.c.row_key,
    unique=True,
)
Index("ix_dataset_rows_submission", dataset_rows.c.submission_id)
