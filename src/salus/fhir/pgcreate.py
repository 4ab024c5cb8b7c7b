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
* ``r``: the ``fhir_resources`` rows, from one array parameter per column
  (``unnest(…) WITH ORDINALITY`` numbers them, joined to ``ids``);
* ``h``: the ``fhir_history`` rows, made from ``r``'s ``RETURNING`` (each
  body is sent once);
* ``i0``, ``i1``, …: one ``INSERT`` per index table and row shape, each row
  carrying the position of its resource;
* the main ``SELECT`` calls ``salus_audit_append`` (the same function and
  parameters as :meth:`AuditLog.append`, each resource its own event, in the
  same transaction as its change: ADR 7), behind a one-time filter on the
  row counts of every insert, so the chain head is locked only once every
  other row is written: it is held for the append and the commit alone.

The statement text depends only on which index tables and columns the group
has, so it repeats and psycopg prepares it on the server after a few uses.
Values go as psycopg adapts them (text, numbers, booleans, bytes and aware
timestamps: the column types of these tables have no bind processing that
changes a value on PostgreSQL, as for :func:`salus.db.bulkcopy.copy_insert`).
"""

# The statement is built from the Tables' own names; every value is a parameter.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from salus.audit.chain import AuditLog
from salus.db.tables import fhir_history, fhir_resources
from salus.fhir.store import FhirStore, PreparedCreates, Stored

__all__ = ["applies", "write_creates"]

_DIALECT = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]
#: Column order of the resource rows (``rid`` comes from ``ids``).
_RESOURCE_COLUMNS = tuple(c.name for c in fhir_resources.c if c.name != "rid")
_HISTORY_COLUMNS = tuple(c.name for c in fhir_history.c)
#: (table, row keys) -> array type of each column, for the casts.
_ARRAY_TYPES: dict[tuple[str, str], str] = {}
#: Statement texts by shape (see :func:`_statement`).
_STATEMENTS: dict[tuple[tuple[str, tuple[str, ...]], ...], str] = {}


def applies(engine: Engine, batches: Sequence[PreparedCreates]) -> bool:
    """Whether ``batches`` can go as one statement: PostgreSQL, and only
    server-assigned ids (an id chosen by the caller needs its check first)."""
    return engine.dialect.name == "postgresql" and not any(b.chosen_ids for b in batches)


def _array_type(table: Table, column: str) -> str:
    key = (table.name, column)
    found = _ARRAY_TYPES.get(key)
    if found is None:
        found = _ARRAY_TYPES[key] = f"{table.c[column].type.compile(dialect=_DIALECT)}[]"
    return found


def _unnest(prefix: str, table: Table, columns: Sequence[str], with_pos: bool) -> str:
    """``unnest`` of one array parameter per column (named ``{prefix}{n}``)."""
    arrays = [f"CAST(%({prefix}{n})s AS {_array_type(table, c)})" for n, c in enumerate(columns)]
    names = [f'"{c}"' for c in columns]
    if with_pos:
        arrays.insert(0, f"CAST(%({prefix}p)s AS INTEGER[])")
        names.insert(0, "pos")
        return f"unnest({', '.join(arrays)}) AS u({', '.join(names)})"
    return f"unnest({', '.join(arrays)}) WITH ORDINALITY AS u({', '.join([*names, 'pos'])})"


def _statement(shapes: tuple[tuple[str, tuple[str, ...]], ...], audit_call: str) -> str:
    """The statement for index row ``shapes`` ((table name, columns) each)."""
    found = _STATEMENTS.get(shapes)
    if found is not None:
        return found
    resource_names = ", ".join(f'"{c}"' for c in _RESOURCE_COLUMNS)
    resource_values = ", ".join(f'u."{c}"' for c in _RESOURCE_COLUMNS)
    history_names = ", ".join(f'"{c}"' for c in _HISTORY_COLUMNS)
    history_values = ", ".join("'POST'" if c == "method" else f'"{c}"' for c in _HISTORY_COLUMNS)
    parts = [
        "WITH ids AS MATERIALIZED ("
        "SELECT nextval(pg_get_serial_sequence('fhir_resources', 'rid')) AS rid, pos"
        " FROM generate_series(1, %(n)s) AS pos)",
        f'r AS (INSERT INTO "fhir_resources" ("rid", {resource_names})'
        f" SELECT ids.rid, {resource_values}"
        f" FROM {_unnest('r', fhir_resources, _RESOURCE_COLUMNS, False)}"
        f" JOIN ids ON ids.pos = u.pos RETURNING *)",
        f'h AS (INSERT INTO "fhir_history" ({history_names})'
        f" SELECT {history_values} FROM r RETURNING 1)",
    ]
    counts = ["(SELECT count(*) FROM r)", "(SELECT count(*) FROM h)"]
    tables = {t.name: t for t in fhir_resources.metadata.sorted_tables}
    for n, (name, columns) in enumerate(shapes):
        table = tables[name]
        names = ", ".join(f'"{c}"' for c in columns)
        values = ", ".join(f'u."{c}"' for c in columns)
        parts.append(
            f'i{n} AS (INSERT INTO "{name}" ("rid", {names}) SELECT ids.rid, {values}'
            f" FROM {_unnest(f'i{n}_', table, columns, True)}"
            f" JOIN ids ON ids.pos = u.pos RETURNING 1)"
        )
        counts.append(f"(SELECT count(*) FROM i{n})")
    sql = (
        ",\n".join(parts)
        + f"\nSELECT {audit_call}, (SELECT count(*) FROM ids)"
        # A one-time filter: every insert above has run before the append
        # locks the chain head (held then only for the append and the commit).
        + f"\nWHERE {' + '.join(counts)} > 0"
    )
    _STATEMENTS[shapes] = sql
    return sql


def write_creates(
    engine: Engine, audit: AuditLog, batches: Sequence[PreparedCreates]
) -> list[list[Stored]]:
    """Write ``batches`` (PostgreSQL, :func:`applies`) in one autocommit
    statement; their results per batch once it has committed. A failure
    writes nothing (one statement, one transaction) and raises SQLAlchemy's
    :class:`DBAPIError` (parameters hidden) or the audit chain's error."""
    rows = [row for batch in batches for row in batch.rows]
    if not rows:
        return [[] for _ in batches]
    params: dict[str, Any] = {"n": len(rows)}
    for n, column in enumerate(_RESOURCE_COLUMNS):
        params[f"r{n}"] = [row[column] for row in rows]
    # Index rows grouped by table and keys (the rid comes from ``ids``).
    grouped: dict[tuple[str, tuple[str, ...]], tuple[list[int], list[dict[str, Any]]]] = {}
    position = 0
    for batch in batches:
        for tables in batch.index_rows:
            position += 1
            for table, values_list in tables.items():
                for values in values_list:
                    keys = tuple(k for k in values if k != "rid")
                    positions, found = grouped.setdefault((table.name, keys), ([], []))
                    positions.append(position)
                    found.append(values)
    shapes = tuple(grouped)
    for n, ((_, keys), (positions, found)) in enumerate(grouped.items()):
        params[f"i{n}_p"] = positions
        for m, key in enumerate(keys):
            params[f"i{n}_{m}"] = [values[key] for values in found]
    events = [e for batch in batches for e in batch.events]
    audit_call, audit_params = audit.pg_append_call(events, "a_")
    params.update(audit_params)
    sql = _statement(shapes, audit_call)
    last, count = _execute(engine, audit, sql, params)
    if last is None or count != len(rows):
        raise RuntimeError("The create group was not written as expected.")
    return [FhirStore._created(batch) for batch in batches]


def _execute(
    engine: Engine, audit: AuditLog, sql: str, params: dict[str, Any]
) -> tuple[int | None, int | None]:
    """Run ``sql`` alone in autocommit on a pooled connection (as
    :meth:`AuditLog.record_batch` does); driver errors as SQLAlchemy's."""
    dbapi_error = engine.dialect.loaded_dbapi.Error
    fairy = engine.raw_connection()
    try:
        driver: Any = fairy.driver_connection
        driver.autocommit = True
        try:
            with driver.cursor() as cursor:
                cursor.execute(sql, params)
                row = cursor.fetchone()
        finally:
            if not driver.closed:
                driver.autocommit = False
    except dbapi_error as exc:
        audit.raise_pg_error(exc)
        lost = engine.dialect.is_disconnect(exc, fairy.dbapi_connection, None)
        if lost:  # as Database.fetch_one does
            fairy.invalidate(exc)
            engine.dispose()
        raise DBAPIError.instance(
            "INSERT (create group)",
            None,
            exc,
            dbapi_error,
            hide_parameters=True,
            connection_invalidated=lost,
            dialect=engine.dialect,
        ) from exc
    finally:
        fairy.close()
    if row is None:
        return None, None
    return row[0], row[1]
