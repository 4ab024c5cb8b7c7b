"""Table definitions of the open data publications and the indicator snapshots.

``opendata_publications``: one row per publication of indicators as open data
(who published, when, which indicator definitions and versions, which
months, the suppression rule); ``opendata_files``: its files, kept in the
blob store (``digest`` is the SHA-256 of the file, so a download can be
checked and served again unchanged). Publications are never changed.

``indicator_snapshots``: the last scheduled computation of each indicator
(its unsuppressed cells per hospital, month and dimension, sealed in the
blob store); API reads use it instead of recomputing (docs/warehouse.md,
"Schedule").
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, String, Table, Text

from salus.db.tables import metadata
from salus.db.types import UTCDateTime

__all__ = ["indicator_snapshots", "metadata", "opendata_files", "opendata_publications"]

opendata_publications = Table(
    "opendata_publications",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("title", String(200), nullable=False),
    Column("description", Text, nullable=False),
    Column("licence", String(64), nullable=False),
    Column("publisher", String(200), nullable=False),  # the organization's name
    Column("publisher_org", String(64), nullable=False),
    Column("published_by", String(120), nullable=False),  # principal kind:id
    Column("published_at", UTCDateTime, nullable=False),
    Column("indicators", JSON, nullable=False),  # [{"id", "version", "by"}]
    Column("periods", JSON, nullable=False),  # ["YYYY-MM", ...]
    Column("min_cell", Integer, nullable=False),
    Column("cells", Integer, nullable=False),
    Column("suppressed", Integer, nullable=False),
)
Index("ix_opendata_publications_published_at", opendata_publications.c.published_at)

opendata_files = Table(
    "opendata_files",
    metadata,
    Column("publication_id", String(36), primary_key=True),
    Column("name", String(120), primary_key=True),
    Column("media_type", String(64), nullable=False),
    Column("digest", String(64), nullable=False),  # SHA-256 of the file (the blob's key)
    Column("bytes", BigInteger, nullable=False),
)

indicator_snapshots = Table(
    "indicator_snapshots",
    metadata,
    Column("indicator", String(64), primary_key=True),
    Column("version", String(16), nullable=False),
    Column("digest", String(64), nullable=False),  # the sealed JSON of the cells
    Column("cells", Integer, nullable=False),
    Column("computed_at", UTCDateTime, nullable=False),
)
