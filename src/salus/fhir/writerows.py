"""Rows of new resources encoded for SQLite before the write lock.

SQLite has one writer at a time (``BEGIN IMMEDIATE`` plus the server's
writer lock, :class:`~salus.db.engine.WriterLock`), so whatever a write
transaction does in Python runs while every other writer waits. For a
transaction Bundle of 100 Patients that was mostly SQLAlchemy's per-row
parameter work (``construct_params`` and the column types' bind processors
for some 1,000 resource, history and index rows), about half of the
Bundle's CPU. :func:`encode_creates` does that work beforehand, outside any
transaction: each row becomes a tuple of driver values (through the same
column-type bind processors SQLAlchemy applies, so the stored values are
identical) without its ``rid``; :func:`insert_encoded` then, inside the
write transaction, numbers the new resources after the table's highest
``rid`` (the transaction holds SQLite's only write lock, so no other writer
can take those numbers) and hands every table's rows to the driver's
``executemany`` in one call.

PostgreSQL keeps its own path (``COPY`` for many rows, a sequence for
``rid``): its writers run side by side, and it meets the Bundle target
already.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError

from salus.db.tables import fhir_history, fhir_resources
from salus.db.types import UTCDateTime
from salus.fhir.writegate import GATE

__all__ = [
    "EncodedCreates",
    "concat_encoded",
    "encode_creates",
    "insert_encoded",
]

Processor = Callable[[Any], Any]
#: (dialect, table, a row's keys) -> see :func:`_statement`.
_STATEMENTS: dict[
    tuple[str, str, tuple[str, ...]],
    tuple[str, Callable[[Mapping[str, Any]], Any], tuple[tuple[int, Processor], ...]],
] = {}


@contextmanager
def _driver_errors(conn: Connection, what: str) -> Iterator[None]:
    """Driver errors as SQLAlchemy's (parameters hidden: they hold patient data),
    so callers and the server's error handling see one kind of error."""
    dbapi = conn.dialect.loaded_dbapi
    try:
        yield
    except dbapi.Error as exc:
        raise DBAPIError.instance(
            what, None, exc, dbapi.Error, hide_parameters=True, dialect=conn.dialect
        ) from exc


def _memo(processor: Processor) -> Processor:
    """A timestamp column's bind processor, remembering its recent results: a
    batch's rows repeat the same few instants (its ``last_updated`` in the
    resource, history and ``_lastUpdated`` rows). The result depends only on
    the instant (:class:`~salus.db.types.UTCDateTime` converts to UTC), and
    equal datetimes are the same instant."""
    seen: dict[Any, Any] = {}

    def process(value: Any) -> Any:
        found = seen.get(value, _MISSING)
        if found is _MISSING:
            found = processor(value)
            if len(seen) >= _MEMO_SIZE:
                seen.clear()
            seen[value] = found
        return found

    return process


_MISSING = object()
_MEMO_SIZE = 1024


def _statement(
    dialect: Dialect, table: Table, keys: tuple[str, ...]
) -> tuple[str, Callable[[Mapping[str, Any]], Any], tuple[tuple[int, Processor], ...]]:
    """The INSERT text for rows with ``keys`` (the rid first, whatever its
    place), a getter of the other values, and the bind processors to apply
    (by position; columns without one are passed as they are)."""
    key = (dialect.name, table.name, keys)
    found = _STATEMENTS.get(key)
    if found is None:
        columns = tuple(name for name in keys if name != "rid")
        # Only the Table's own column names (a KeyError for any other).
        names = ", ".join(f'"{table.c[name].name}"' for name in ("rid", *columns))
        marks = ", ".join("?" for _ in range(len(columns) + 1))
        processors = tuple(
            (
                position,
                _memo(processor) if isinstance(table.c[name].type, UTCDateTime) else processor,
            )
            for position, name in enumerate(columns)
            if (processor := table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
            is not None
        )
        many = itemgetter(*columns)
        getter: Callable[[Mapping[str, Any]], Any] = (
            many if len(columns) > 1 else (lambda row: (many(row),))
        )
        sql = f'INSERT INTO "{table.name}" ({names}) VALUES ({marks})'  # noqa: S608 - names from the Table
        found = (sql, getter, processors)
        _STATEMENTS[key] = found
    return found


def _encode(dialect: Dialect, table: Table, row: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
    sql, getter, processors = _statement(dialect, table, tuple(row))
    values = getter(row)
    if processors:
        changed = list(values)
        for position, processor in processors:
            changed[position] = processor(changed[position])
        values = tuple(changed)
    return sql, values


@dataclass(slots=True)
class EncodedCreates:
    """Driver-ready rows of a batch of new resources, each without its ``rid``.

    ``rows`` maps an INSERT text to (position of the resource in the batch,
    the row's other values); ``count`` is the number of resources.
    """

    count: int
    rows: dict[str, list[tuple[int, tuple[Any, ...]]]] = field(default_factory=dict)


def encode_creates(
    dialect: Dialect,
    resources: Sequence[Mapping[str, Any]],
    index_rows: Sequence[Mapping[Table, Sequence[Mapping[str, Any]]]],
    *,
    method: str = "POST",
    resource: bool = True,
) -> EncodedCreates | None:
    """Encode a batch's resource, history (``method``) and index rows; None
    where this path does not apply (not SQLite). ``resource=False``: no
    ``fhir_resources`` row (an update, whose row is updated in place)."""
    if dialect.name != "sqlite":
        return None
    encoded = EncodedCreates(len(resources))
    out = encoded.rows
    for position, (row, tables) in enumerate(zip(resources, index_rows, strict=True)):
        GATE.checkpoint()
        if resource:
            sql, values = _encode(dialect, fhir_resources, row)
            out.setdefault(sql, []).append((position, values))
        sql, values = _encode(dialect, fhir_history, {**row, "method": method})
        out.setdefault(sql, []).append((position, values))
        for table, values_list in tables.items():
            _encode_rows(dialect, table, values_list, position, out)
    return encoded


def _encode_rows(
    dialect: Dialect,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    position: int,
    out: dict[str, list[tuple[int, tuple[Any, ...]]]],
) -> None:
    """:func:`_encode` of one resource's rows of ``table``, looking the
    statement up again only when a row's keys differ from the previous
    row's (an index table's rows mostly share them)."""
    shape: tuple[str, ...] | None = None
    getter: Callable[[Mapping[str, Any]], Any] = tuple
    processors: tuple[tuple[int, Processor], ...] = ()
    bucket: list[tuple[int, tuple[Any, ...]]] = []
    for row in rows:
        keys = tuple(row)
        if keys != shape:
            shape = keys
            sql, getter, processors = _statement(dialect, table, keys)
            bucket = out.setdefault(sql, [])
        values = getter(row)
        if processors:
            changed = list(values)
            for at, processor in processors:
                changed[at] = processor(changed[at])
            values = tuple(changed)
        bucket.append((position, values))


def concat_encoded(parts: Sequence[EncodedCreates]) -> EncodedCreates:
    """Several batches' rows as one batch (positions shifted), for group commit."""
    merged = EncodedCreates(0)
    for part in parts:
        offset = merged.count
        for sql, rows in part.rows.items():
            merged.rows.setdefault(sql, []).extend((p + offset, v) for p, v in rows)
        merged.count += part.count
    return merged


def insert_encoded(conn: Connection, encoded: EncodedCreates, rid: int | None = None) -> list[int]:
    """Insert the rows in ``conn``'s SQLite write transaction; return the new
    resources' ``rid`` values in batch order (numbered from ``rid`` when given,
    an existing resource's, else after the table's highest)."""
    driver: Any = conn.connection.driver_connection
    with _driver_errors(conn, "INSERT"):
        return _insert_encoded(driver, encoded, rid)


def _insert_encoded(driver: Any, encoded: EncodedCreates, rid: int | None) -> list[int]:
    cursor = driver.cursor()
    try:
        if rid is None:
            cursor.execute('SELECT max("rid") FROM "fhir_resources"')
            highest = cursor.fetchone()[0]
            base = int(highest or 0) + 1
        else:
            base = rid
        # One (rid,) tuple per resource, joined to each row's values: cheaper
        # under the lock than unpacking every row into a new tuple.
        rids = [(base + position,) for position in range(encoded.count)]
        for sql, rows in encoded.rows.items():
            cursor.executemany(sql, [rids[position] + values for position, values in rows])
    finally:
        cursor.close()
    return list(range(base, base + encoded.count))
