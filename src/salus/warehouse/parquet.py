"""View rows as Arrow tables and Parquet bytes (the hand-off to DuckDB and Spark).

Column types follow the ViewDefinition's ``column.type`` (SQL-on-FHIR v2
§"Type hinting"): ``boolean`` → BOOLEAN, ``integer``/``positiveInt``/
``unsignedInt``/``integer64`` → BIGINT, ``decimal`` → DOUBLE, everything else
(strings, codes, dates and times as their ISO text, untyped columns) →
VARCHAR; ``collection: true`` makes a LIST of that type. Complex values in an
untyped column become their JSON text. Every part also carries ``_rid``, the
resource's row id, which is how an incremental run finds the rows it
replaces; queries never see it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from salus.warehouse.sqlonfhir import Column

__all__ = ["RID", "arrow_schema", "from_parquet", "rows_to_table", "to_parquet", "without_rids"]

#: The hidden column naming each row's source resource (``fhir_resources.rid``).
RID = "_rid"

_INTEGERS = frozenset({"integer", "positiveInt", "unsignedInt", "integer64"})


def _arrow_type(column: Column) -> pa.DataType:
    if column.type == "boolean":
        base: pa.DataType = pa.bool_()
    elif column.type in _INTEGERS:
        base = pa.int64()
    elif column.type == "decimal":
        base = pa.float64()
    else:
        base = pa.string()
    return pa.list_(base) if column.collection else base


def arrow_schema(columns: Sequence[Column], *, with_rid: bool = True) -> pa.Schema:
    fields = [pa.field(c.name, _arrow_type(c)) for c in columns]
    if with_rid:
        fields.append(pa.field(RID, pa.int64(), nullable=False))
    return pa.schema(fields)


def _text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    return str(value)


def _cast(value: Any, column: Column) -> Any:
    if value is None:
        return None
    kind = column.type
    if kind == "boolean":
        return value if isinstance(value, bool) else None
    if kind in _INTEGERS:
        return (
            int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        )
    if kind == "decimal":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return None
    return _text(value)


def rows_to_table(
    columns: Sequence[Column], rows: Sequence[tuple[Any, ...]], rids: Sequence[int] | None
) -> pa.Table:
    """An Arrow table of ``rows`` (tuples in column order); ``rids`` adds ``_rid``."""
    arrays: list[list[Any]] = [[] for _ in columns]
    for row in rows:
        for index, value in enumerate(row):
            arrays[index].append(value)
    data: list[pa.Array] = []
    for column, values in zip(columns, arrays, strict=True):
        if column.collection:
            cast = [[_cast(v, column) for v in (value or [])] for value in values]
        else:
            cast = [_cast(v, column) for v in values]
        data.append(pa.array(cast, type=_arrow_type(column)))
    if rids is not None:
        data.append(pa.array(rids, type=pa.int64()))
    return pa.Table.from_arrays(data, schema=arrow_schema(columns, with_rid=rids is not None))


def to_parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def from_parquet(data: bytes | bytearray) -> pa.Table:
    return pq.read_table(pa.BufferReader(bytes(data)))


def without_rids(table: pa.Table, rids: set[int]) -> pa.Table:
    """The rows of ``table`` whose ``_rid`` is not in ``rids``."""
    import pyarrow.compute as pc

    mask = pc.invert(pc.is_in(table.column(RID), value_set=pa.array(sorted(rids), pa.int64())))
    return table.filter(mask)
