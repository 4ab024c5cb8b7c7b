"""Duplicate detection of the HL7 message store: found through the unique
index on (organization, facility, MSH-10), never by scanning the store."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, insert

from salus.db.engine import Database
from salus.db.tables import organizations
from salus.hl7.store import MessageStore, NewMessage, keys_statement


def _message(n: int) -> NewMessage:
    return NewMessage(
        raw=f"MSH|^~\\&|HIS|FAC|SALUS|SALUS|20260101||ADT^A01|C{n}|P|2.5\r".encode(),
        source="mllp",
        org_id="hosp",
        sending_facility="FAC",
        control_id=f"C{n}",
        message_type="ADT^A01",
    )


def test_resent_messages_are_found_in_batches_larger_than_one_query(db: Database) -> None:
    with db.write() as conn:
        conn.execute(
            insert(organizations).values(
                id="hosp", name="H", kind="hospital", active=True, created_at=datetime.now(UTC)
            )
        )
    store = MessageStore(db, None)
    first = store.record_many([_message(n) for n in range(250)])
    assert [duplicate for _, duplicate in first] == [False] * 250
    again = store.record_many([_message(n) for n in range(240, 260)])
    assert [duplicate for _, duplicate in again] == [True] * 10 + [False] * 10
    assert [row["id"] for row, _ in again[:10]] == [row["id"] for row, _ in first[240:]]


def test_duplicate_query_uses_the_unique_index_on_sqlite(db: Database) -> None:
    if not db.is_sqlite:
        pytest.skip("PostgreSQL plans a row-value IN and an OR alike (bitmap index scans)")
    compiled = keys_statement(2).compile(db.engine)
    values = {"o0": "hosp", "f0": "FAC", "c0": "C1", "o1": "hosp", "f1": "FAC", "c1": "C2"}
    params = compiled.construct_params(values)
    positional = tuple(params[name] for name in compiled.positiontup or ())
    with db.engine.connect() as conn:
        plan = [
            str(row[3])
            for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", positional)
        ]
    assert not any(step.startswith("SCAN hl7_messages") for step in plan), plan
    assert any("INDEX" in step and "control_id=?" in step for step in plan), plan


def test_a_batch_is_one_statement_and_duplicates_cost_one_more(db: Database) -> None:
    """PostgreSQL: new messages go in with one autocommit ``INSERT … ON CONFLICT DO
    NOTHING RETURNING`` (no BEGIN, no duplicate query, no COMMIT round trips);
    resent ones are read back after it. SQLite: the same insert in a transaction."""
    with db.write() as conn:
        conn.execute(
            insert(organizations).values(
                id="hosp", name="H", kind="hospital", active=True, created_at=datetime.now(UTC)
            )
        )
    store = MessageStore(db, None)
    statements: list[str] = []
    autocommit: list[bool] = []

    def on_execute(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement.split(None, 1)[0].upper())
        # psycopg in autocommit mode sends no BEGIN, and the statement commits itself.
        autocommit.append(bool(getattr(conn.connection.dbapi_connection, "autocommit", False)))

    event.listen(db.engine, "before_cursor_execute", on_execute)
    try:
        store.record_many([_message(n) for n in range(5)])
        fresh, fresh_autocommit = list(statements), list(autocommit)
        statements.clear()
        autocommit.clear()
        again = store.record_many([_message(n) for n in range(3, 8)])
    finally:
        event.remove(db.engine, "before_cursor_execute", on_execute)
    assert [duplicate for _, duplicate in again] == [True, True, False, False, False]
    if db.is_sqlite:  # BEGIN IMMEDIATE is a statement of its own there
        assert fresh == ["BEGIN", "INSERT"], fresh
        assert statements == ["BEGIN", "INSERT", "SELECT"], statements
    else:
        assert fresh == ["INSERT"] and fresh_autocommit == [True], (fresh, fresh_autocommit)
        assert statements == ["INSERT", "SELECT"] and autocommit == [True, True], statements
