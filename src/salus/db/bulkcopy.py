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
    with (
        driver.cursor() as cursor,
        cursor.copy(
            f'COPY "{table.name}" ({quoted}) FROM STDIN'  # names from the Table, not from input
        ) as copy,
    ):
        for row in rows:
            copy.write_row([row[name] for name in columns])


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
