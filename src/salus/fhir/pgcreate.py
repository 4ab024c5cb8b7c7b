"""A group of new resources written on PostgreSQL in one statement.

FHIR R4 ``http.html#create``, ADR 21 (stop-15 amendment). A group commit of
one-by-one creates (:mod:`salus.fhir.groupcommit`) used to be some ten round
trips on PostgreSQL: ``BEGIN``, the resources' ``INSERT … RETURNING rid``,
the history rows, one ``INSERT`` or ``COPY`` per index table (a ``COPY`` is
two round trips), the audit append and ``COMMIT``. After each round trip the
writing thread had to win the interpreter lock back from the threads
preparing the next requests, and the backend sat ``idle in transaction``
meanwhile, holding the audit chain's head from the append to the commit.

Here the whole group is **one statement in autocommit mode**, so one round
trip and one implicit transaction (committed, ``synchronous_commit`` on,
before the reply comes back: nothing is acknowledged before it is durable):

* ``ids``: the new ``rid`` values, drawn from the table's sequence;
* ``r``: the ``fhir_resources`` rows, from one JSON parameter
  (``json_populate_recordset`` over the table's row type; each row's
  ``rid`` field carries its position in the group, joined to ``ids``);
* ``h``: the ``fhir_history`` rows, made from ``r``'s ``RETURNING`` (each
  body is sent once);
* ``i0``, ``i1``, …: one ``INSERT`` per index table and row shape, from one
  JSON parameter each, the same way;
* the main ``SELECT`` calls ``salus_audit_append`` (the same function and
  arguments as :meth:`AuditLog.append`, the events unpacked from one JSON
  parameter by :meth:`AuditLog.pg_append_json`; each resource its own
  event, in the same transaction as its change: ADR 7), behind a one-time
  filter on the row counts of every insert, so the chain head is locked
  only once every other row is written: it is held for the append and the
  commit alone.

Rows travel as JSON because psycopg quotes the elements of array
parameters in Python, one by one (a quarter of a worker's interpreter time
in the group statement's first version); a JSON text is made by the C
encoder and sent as it is. Values JSON lacks go as their column type's
input text: timestamps in ISO 8601 with their offset (the store's are
aware, as :class:`~salus.db.types.UTCDateTime` requires), decimals as
their exact digits, bytes in bytea's hex format. The statement text
depends only on which index tables and columns the group has, so it
repeats; psycopg prepares it on the server after a few uses, and the
group's size reaches the planner only through a sub-select so that
PostgreSQL settles on one generic plan instead of planning every
execution again.
"""

# The statement is built from the Tables' own names; every value is a parameter.
# ruff: noqa: S608

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.engine import Engine

from salus.audit.chain import AuditLog
from salus.db.engine import Database
from salus.db.tables import fhir_history, fhir_resources
from salus.fhir.prepare import PreparedCreates, created
from salus.fhir.store import Stored

__all__ = ["applies", "write_creates"]

log = logging.getLogger("salus.fhir")

#: Column order of the resource rows (``rid`` comes from ``ids``).
_RESOURCE_COLUMNS = tuple(c.name for c in fhir_resources.c if c.name != "rid")
_HISTORY_COLUMNS = tuple(c.name for c in fhir_history.c)
#: Statement texts by shape (see :func:`_statement`).
_STATEMENTS: dict[tuple[tuple[str, tuple[str, ...]], ...], str] = {}
_MAX_STATEMENTS = 256
_TABLES = {t.name: t for t in fhir_resources.metadata.sorted_tables}


def _json_value(value: Any) -> Any:
    """A row value JSON does not have, as the column type's input text."""
    if isinstance(value, datetime):
        if value.tzinfo is None:  # as UTCDateTime refuses them
            raise ValueError("naive datetimes are not stored; use UTC-aware values")
        return value.isoformat()  # timestamptz input, with its offset
    if isinstance(value, Decimal):
        return str(value)  # numeric input, exact
    if isinstance(value, bytes):
        return "\\x" + value.hex()  # bytea input, hex format
    raise TypeError(f"{type(value).__name__} is not a row value")


_dumps = json.JSONEncoder(
    default=_json_value, ensure_ascii=False, separators=(",", ":"), check_circular=False
).encode


def applies(engine: Engine, batches: Sequence[PreparedCreates]) -> bool:
    """Whether ``batches`` can go as one statement: PostgreSQL, and only
    server-assigned ids (an id chosen by the caller needs its check first)."""
    return engine.dialect.name == "postgresql" and not any(b.chosen_ids for b in batches)


def _rows_of(table: str, param: str) -> str:
    """A table's rows from one JSON parameter (objects keyed by column name,
    ``rid`` holding the resource's position in the group)."""
    return f'json_populate_recordset(NULL::"{table}", CAST(%({param})s AS json)) AS x'


def _statement(shapes: tuple[tuple[str, tuple[str, ...]], ...], audit: tuple[str, str]) -> str:
    """The statement for index row ``shapes`` ((table name, row keys) each)
    and the audit append's FROM item and call."""
    found = _STATEMENTS.get(shapes)
    if found is not None:
        return found
    resource_names = ", ".join(f'"{c}"' for c in _RESOURCE_COLUMNS)
    resource_values = ", ".join(f'x."{c}"' for c in _RESOURCE_COLUMNS)
    history_names = ", ".join(f'"{c}"' for c in _HISTORY_COLUMNS)
    history_values = ", ".join("'POST'" if c == "method" else f'"{c}"' for c in _HISTORY_COLUMNS)
    parts = [
        "WITH ids AS MATERIALIZED ("
        "SELECT nextval(pg_get_serial_sequence('fhir_resources', 'rid')) AS rid, pos"
        " FROM generate_series(1, (SELECT CAST(%(n)s AS integer))) AS pos)",
        f'r AS (INSERT INTO "fhir_resources" ("rid", {resource_names})'
        f" SELECT ids.rid, {resource_values} FROM {_rows_of('fhir_resources', 'r')}"
        " JOIN ids ON ids.pos = x.rid RETURNING *)",
        f'h AS (INSERT INTO "fhir_history" ({history_names})'
        f" SELECT {history_values} FROM r RETURNING 1)",
    ]
    counts = ["(SELECT count(*) FROM r)", "(SELECT count(*) FROM h)"]
    for n, (name, keys) in enumerate(shapes):
        table = _TABLES[name]
        columns = [c for c in keys if c != "rid"]
        names = ", ".join(f'"{table.c[c].name}"' for c in columns)  # a KeyError if not a column
        values = ", ".join(f'x."{c}"' for c in columns)
        parts.append(
            f'i{n} AS (INSERT INTO "{name}" ("rid", {names}) SELECT ids.rid, {values}'
            f" FROM {_rows_of(name, f'i{n}')} JOIN ids ON ids.pos = x.rid RETURNING 1)"
        )
        counts.append(f"(SELECT count(*) FROM i{n})")
    from_item, call = audit
    sql = (
        ",\n".join(parts)
        + f"\nSELECT {call}, (SELECT count(*) FROM ids)\nFROM {from_item}"
        # A one-time filter: every insert above has run before the append
        # locks the chain head (held then only for the append and the commit).
        + f"\nWHERE {' + '.join(counts)} > 0"
    )
    if len(_STATEMENTS) >= _MAX_STATEMENTS:  # groups of many resource types
        _STATEMENTS.clear()
    _STATEMENTS[shapes] = sql
    return sql


def write_creates(
    db: Database, audit: AuditLog, batches: Sequence[PreparedCreates]
) -> list[list[Stored]]:
    """Write ``batches`` (PostgreSQL, :func:`applies`) in one autocommit
    statement; their results per batch once it has committed. A failure
    writes nothing (one statement, one transaction) and raises SQLAlchemy's
    :class:`DBAPIError` (parameters hidden) or the audit chain's error."""
    resources: list[dict[str, Any]] = []
    # Index rows grouped by table and keys; each row's rid is set to its
    # resource's position (the statement joins it to the new rid).
    grouped: dict[tuple[str, tuple[str, ...]], list[dict[str, Any]]] = {}
    position = 0
    for batch in batches:
        for row, tables in zip(batch.rows, batch.index_rows, strict=True):
            position += 1
            resources.append({**row, "rid": position})
            for table, values_list in tables.items():
                name = table.name
                for values in values_list:
                    values["rid"] = position
                    key = (name, tuple(values))  # the row's keys, its rid among them
                    found = grouped.get(key)
                    if found is None:
                        grouped[key] = [values]
                    else:
                        found.append(values)
    if not resources:
        return [[] for _ in batches]
    params: dict[str, Any] = {"n": position, "r": _dumps(resources)}
    # In a fixed order: one statement text per set of shapes, whatever the
    # order the group's resources brought them in.
    shapes = tuple(sorted(grouped))
    for n, shape in enumerate(shapes):
        params[f"i{n}"] = _dumps(grouped[shape])
    events = [e for batch in batches for e in batch.events]
    from_item, call, audit_params = audit.pg_append_json(events, "a")
    params.update(audit_params)
    sql = _statement(shapes, (from_item, call))
    last, count = _execute(db, audit, sql, params)
    if last is None or count != position:
        # Committed already: raising would have the group written again.
        log.error("a create group statement returned %r, %r for %d", last, count, position)
    return [created(batch) for batch in batches]


def _execute(
    db: Database, audit: AuditLog, sql: str, params: dict[str, Any]
) -> tuple[int | None, int | None]:
    """Run ``sql`` alone in autocommit on a pooled connection
    (:meth:`Database.fetch_raw`, as :meth:`AuditLog.record_batch` does);
    driver errors as SQLAlchemy's, the chain's own errors first."""
    found = db.fetch_raw(sql, params, on_error=audit.raise_pg_error, label="INSERT (create group)")
    if found is None:
        return None, None
    row = found[1]
    return row[0], row[1]
