"""The warehouse: SQL-on-FHIR views materialized as Parquet and queried with DuckDB."""

from __future__ import annotations
