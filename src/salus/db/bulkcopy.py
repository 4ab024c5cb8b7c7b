"""Many rows into one table, fast on PostgreSQL: ``COPY … FROM STDIN``.

A transaction Bundle of 100 resources writes several hundred index rows. An
``executemany`` (psycopg's pipeline) or a multi-row ``INSERT`` (SQLAlchemy's
insertmanyvalues, one long SQL text that psycopg parses in Python each time)
costs more CPU than everything else in the Bundle; ``COPY`` streams the rows
in psycopg's C code, inside the caller's transaction. Below
:data:`COPY_MIN_ROWS` rows, or on SQLite, a plain insert is used.

Only tables of plain columns are copied (text, numbers, booleans, bytes,
timestamps): the values go through psycopg's adapters, not SQLAlchemy's
type processors, so a column type with a bind processor that changes values
(other than :class:`~salus.db.types.UTCDateTime`, which leaves aware values
as they are on PostgreSQL) must not be copied this way.

The rows go in COPY's binary format when every column is of a built-in type
other than ``numeric``: bodies (``bytea``) and timestamps then cost half the
client CPU of the text format, which escapes every byte and writes every
date. ``numeric`` is cheaper as text (psycopg's binary form of a Decimal is
built digit group by digit group), so a table with such a column (the
quantity, number and composite indexes) is copied as text. The column types
are read from the database once per table (binary COPY does not convert:
each value must be of its column's exact type).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Insert, Table, insert, text
from sqlalchemy.engine import Connection

__all__ = ["COPY_MIN_ROWS", "copy_insert", "next_ids"]

#: Fewer rows than this go as an ordinary insert (COPY has a fixed cost).
COPY_MIN_ROWS = 16

_INSERTS: dict[Table, Insert] = {}


def copy_insert(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` (dicts with the same keys) into ``table`` in ``conn``'s transaction."""
    if not rows:
        return
    columns = list(rows[0])
    uniform = all(len(row) == len(columns) for row in rows)
    if conn.dialect.name != "postgresql" or len(rows) < COPY_MIN_ROWS or not uniform:
        statement = _INSERTS.get(table)
        if statement is None:  # built once per table: building costs more than running
            statement = _INSERTS[table] = insert(table)
        conn.execute(statement, rows[0] if len(rows) == 1 else list(rows))
        return
    quoted = ", ".join(f'"{name}"' for name in columns)
    driver = conn.connection.driver_connection
    assert driver is not None  # noqa: S101 - a checked-out connection has one
    oids = _binary_types(driver, table, columns)
    binary = " (FORMAT BINARY)" if oids is not None else ""
    with (
        driver.cursor() as cursor,
        cursor.copy(
            f'COPY "{table.name}" ({quoted}) FROM STDIN{binary}'  # names from the Table
        ) as copy,
    ):
        if oids is not None:
            copy.set_types(oids)
        for row in rows:
            copy.write_row([row[name] for name in columns])


#: PostgreSQL's first OID of objects made after initdb (``FirstNormalObjectId``):
#: below it, the built-in types, whose OIDs are the same in every database.
_FIRST_NORMAL_OID = 16384
_NUMERIC_OID = 1700
#: (table, columns) → the columns' type OIDs for a binary COPY, or None (text).
_BINARY_TYPES: dict[tuple[str, tuple[str, ...]], list[int] | None] = {}


def _binary_types(driver: Any, table: Table, columns: list[str]) -> list[int] | None:
    """The type OIDs of ``columns`` when ``table`` is copied in binary, else None."""
    key = (table.name, tuple(columns))
    if key in _BINARY_TYPES:
        return _BINARY_TYPES[key]
    with driver.cursor() as cursor:
        cursor.execute(
            "SELECT attname, atttypid::int FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (table.name,),
        )
        found = {str(name): int(oid) for name, oid in cursor.fetchall()}
    oids = [found.get(name, 0) for name in columns]
    binary = all(0 < oid < _FIRST_NORMAL_OID and oid != _NUMERIC_OID for oid in oids)
    _BINARY_TYPES[key] = oids if binary else None
    return _BINARY_TYPES[key]


def next_ids(conn: Connection, table: Table, column: str, count: int) -> list[int]:
    """``count`` values of ``table.column``'s sequence (PostgreSQL), in order."""
    result = conn.execute(
        text(
            "SELECT nextval(pg_get_serial_sequence(:table, :column)) "
            "FROM generate_series(1, :count)"
        ),
        {"table": table.name, "column": column, "count": count},
    )
    return sorted(int(value) for value in result.scalars())
