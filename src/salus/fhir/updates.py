"""Updates prepared before their write transaction (FHIR R4 http.html#update).

An update used to do all of its work inside the write transaction: read the
current row, validate and seal the new version, extract its index values,
then one statement per index table to clear the old rows and one per table
to insert the new ones, each through SQLAlchemy's execution machinery. About
three times the CPU of a create, and on SQLite all of it while every other
writer waited.

:func:`plan_update` does the work that needs no lock from a committed
snapshot of the current row (autocommit read): the new body with its
``meta``, validation, sealing, compartment, index rows and the audit event.
:func:`write_planned` then, in the write transaction, locks the row again and
writes the plan only if the row is still the version the plan was made from
(same ``rid`` and ``version``); the owner and ``If-Match`` checks run on that
locked row. Anything else (a concurrent update, a deletion, a purge) returns
None and the caller runs the ordinary :meth:`FhirStore.update` in the same
transaction. Inside the transaction the index rows of the old version go with
one statement (PostgreSQL: one ``DELETE`` per table chained as data-modifying
``WITH`` clauses, one round trip) or as plain driver statements (SQLite), and
the new rows, resource and history row as driver-ready values
(:mod:`salus.fhir.writerows`) on SQLite.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.engine import Connection, Dialect

from salus.audit.events import AuditEvent
from salus.db.bulkcopy import copy_insert
from salus.db.tables import fhir_history, fhir_resources
from salus.errors import PreconditionFailed
from salus.fhir.categories import category_of
from salus.fhir.indexing import INDEX_TABLES
from salus.fhir.prepare import json_bytes, write_event
from salus.fhir.writerows import EncodedCreates, encode_creates, insert_encoded
from salus.security.principal import Principal

if TYPE_CHECKING:
    from salus.fhir.store import FhirStore

__all__ = ["UpdatePlan", "plan_update", "write_planned"]

#: The current row's key facts, by type and id (``_rt``, ``_rid``).
CURRENT = select(
    fhir_resources.c.rid,
    fhir_resources.c.version,
    fhir_resources.c.deleted,
    fhir_resources.c.org_id,
).where(fhir_resources.c.res_type == bindparam("_rt"), fhir_resources.c.res_id == bindparam("_rid"))
_UPDATE_RESOURCE = update(fhir_resources).where(fhir_resources.c.rid == bindparam("rid_"))
_CURRENT_SQLITE = 'SELECT "version", "deleted", "org_id" FROM "fhir_resources" WHERE "rid" = ?'
_CURRENT_PG = (
    'SELECT "version", "deleted", "org_id" FROM "fhir_resources" WHERE "rid" = %s FOR UPDATE'
)
_CLEAR_SQLITE = tuple(f'DELETE FROM "{t.name}" WHERE "rid" = ?' for t in INDEX_TABLES)  # noqa: S608
#: Table names from the Table definitions, never from input.
_CLEAR_PG = "WITH {} SELECT 1".format(
    ", ".join(
        f'd{n} AS (DELETE FROM "{t.name}" WHERE "rid" = %(rid)s)'  # noqa: S608
        for n, t in enumerate(INDEX_TABLES)
    )
)


@dataclass(slots=True)
class UpdatePlan:
    """A new version of an existing resource, ready to be written."""

    res_type: str
    res_id: str
    rid: int
    version: int
    body: dict[str, Any]
    now: datetime
    values: dict[str, Any]
    index_rows: dict[Table, list[dict[str, Any]]]
    event: AuditEvent
    #: The resource row, history row and index rows as SQLite driver values.
    encoded: EncodedCreates | None


def plan_update(
    store: FhirStore,
    principal: Principal,
    res_type: str,
    res_id: str,
    resource: Mapping[str, Any],
    current: Mapping[str, Any],
    dialect: Dialect,
) -> UpdatePlan:
    """Prepare the version after ``current`` (a :data:`CURRENT` row) of a
    resource; validation errors are raised here, before any transaction."""
    rid, version = int(current["rid"]), int(current["version"]) + 1
    now = store.clock()
    body = store._prepare(resource, res_type, res_id, version, now)
    raw = json_bytes(body)
    patient_key = store.compartment(body)
    values = {
        "version": version,
        "org_id": str(current["org_id"]),
        "patient_key": patient_key,
        "category": category_of(body),
        "deleted": False,
        "last_updated": now,
        "body": store._seal_raw(res_type, res_id, version, raw),
    }
    index_rows = store.indexer.rows(rid, res_type, body)
    event = write_event(principal, "U", res_type, res_id, version, patient_key)
    encoded = None
    if dialect.name == "sqlite":
        # The history row and index rows as for a create (their rid is
        # numbered from position 0 = this resource's rid).
        row = {"res_type": res_type, "res_id": res_id, **values}
        encoded = encode_creates(dialect, [row], [index_rows], method="PUT", resource=False)
    return UpdatePlan(res_type, res_id, rid, version, body, now, values, index_rows, event, encoded)


def write_planned(
    store: FhirStore,
    conn: Connection,
    principal: Principal,
    plan: UpdatePlan,
    if_match: int | None,
) -> bool:
    """Write ``plan`` if the resource is still at the version it was made
    from; False (nothing written) otherwise."""
    driver: Any = conn.connection.driver_connection
    sqlite = conn.dialect.name == "sqlite"
    cursor = driver.cursor()
    try:
        cursor.execute(_CURRENT_SQLITE if sqlite else _CURRENT_PG, (plan.rid,))
        row = cursor.fetchone()
    finally:
        cursor.close()
    if row is None or int(row[0]) != plan.version - 1 or bool(row[1]):
        return False
    store._owner_check(principal, {"org_id": row[2]})  # type: ignore[arg-type]
    if if_match is not None and if_match != int(row[0]):
        raise PreconditionFailed(f"Version conflict: the current version is {int(row[0])}.")
    if sqlite:
        assert plan.encoded is not None  # noqa: S101 - made for SQLite
        cursor = driver.cursor()
        try:
            for statement in _CLEAR_SQLITE:
                cursor.execute(statement, (plan.rid,))
        finally:
            cursor.close()
        conn.execute(_UPDATE_RESOURCE, {"rid_": plan.rid, **plan.values})
        insert_encoded(conn, plan.encoded, rid=plan.rid)
    else:
        conn.exec_driver_sql(_CLEAR_PG, {"rid": plan.rid})
        conn.execute(_UPDATE_RESOURCE, {"rid_": plan.rid, **plan.values})
        copy_insert(
            conn,
            fhir_history,
            [
                {
                    "rid": plan.rid,
                    "res_type": plan.res_type,
                    "res_id": plan.res_id,
                    "method": "PUT",
                    **plan.values,
                }
            ],
        )
        store.indexer.insert_rows(conn, plan.index_rows)
    store.audit.append(conn, [plan.event])
    return True
