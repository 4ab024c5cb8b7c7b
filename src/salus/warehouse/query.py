"""SQL over materialized views with DuckDB.

The Parquet parts of a view are blobs, encrypted at rest; a query opens the
parts of the views its SQL names (a view's ``name`` is its table name),
decrypts them in memory into Arrow tables and registers those with an
in-memory DuckDB connection: plaintext never touches the disk. The
connection then loses access to files and the network
(``enable_external_access = false``, configuration locked), so a query can
read the registered views and nothing else, and write nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from salus.errors import InvalidInput
from salus.storage.blobstore import BlobStore
from salus.warehouse.catalog import StoredView
from salus.warehouse.parquet import RID, arrow_schema, from_parquet

__all__ = ["QueryResult", "duckdb_session", "run_sql", "view_table"]

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def view_table(blobs: BlobStore, stored: StoredView) -> pa.Table:
    """All rows of a materialized view as one Arrow table (without ``_rid``)."""
    parts = stored.parts()
    if not parts:
        return arrow_schema(stored.compiled().columns, with_rid=False).empty_table()
    tables = [from_parquet(blobs.get(part["digest"])) for part in parts]
    table = pa.concat_tables(tables)
    return table.drop_columns([RID])


@contextmanager
def duckdb_session(blobs: BlobStore, views: Iterable[StoredView]) -> Iterator[Any]:
    """A locked-down in-memory DuckDB connection with ``views`` registered by name."""
    con = duckdb.connect(":memory:")
    try:
        for stored in views:
            con.register(stored.name, view_table(blobs, stored))
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        yield con
    finally:
        con.close()


def run_sql(
    blobs: BlobStore, views: Iterable[StoredView], sql: str, *, max_rows: int
) -> QueryResult:
    """Run one SQL statement over the views it names; at most ``max_rows`` rows back."""
    if not sql.strip():
        raise InvalidInput("Empty SQL.")
    words = set(_WORD.findall(sql))
    named = [v for v in views if v.name in words]
    with duckdb_session(blobs, named) as con:
        try:
            cursor = con.execute(sql)
        except duckdb.Error as exc:
            raise InvalidInput(f"SQL error: {_safe(exc)}") from None
        if cursor.description is None:
            return QueryResult([], [])
        columns = [d[0] for d in cursor.description]
        rows = cursor.fetchmany(max_rows)
    return QueryResult(columns, [tuple(row) for row in rows])


def _safe(exc: Exception) -> str:
    """Parser, binder and catalog errors name columns and tables: their first line is
    shown. Others (conversions...) may quote values: only their kind is."""
    if isinstance(exc, duckdb.ParserException | duckdb.BinderException | duckdb.CatalogException):
        return (str(exc).splitlines() or [""])[0][:300]
    return f"the query failed while reading the data ({type(exc).__name__})"
