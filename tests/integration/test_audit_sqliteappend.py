"""The SQLite audit append with its chain-free work done before the write lock
(salus.audit.sqliteappend): the rows it stores are byte for byte those of
``AuditEvent.row`` inserted through SQLAlchemy (the reference path), the
hashes those of ``event_hash``, and the chain verifies after a group of
FHIR create batches written together; PostgreSQL takes prepared events as
plain ones."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, text
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect
from sqlalchemy.exc import DBAPIError

from salus.audit import AuditEvent, AuditLog, verify_chain
from salus.audit.events import GENESIS_HASH, event_hash
from salus.audit.sqliteappend import PreparedEvents, chain_rows, prepare_events
from salus.db import Database
from salus.db.engine import create_database
from salus.db.migrate import migrate
from salus.db.tables import audit_events
from salus.fhir.prepare import merge_prepared
from salus.security.principal import Principal, PrincipalKind
from salus.services import build_fhir_store

AT = datetime(2026, 11, 24, 1, 2, 3, 456789, tzinfo=UTC)
ALICE = Principal(PrincipalKind.USER, "alice", "hospital-a", address="10.0.0.7")
BOB = Principal(PrincipalKind.CLIENT, "bob-ehr", "hospital-b", client_id="bob-ehr")


def _events() -> list[AuditEvent]:
    """Events with and without every optional field, non-ASCII text,
    characters JSON escapes, nested detail and large seq-like numbers."""
    return [
        AuditEvent(category="system", action="E"),
        AuditEvent.for_principal(
            ALICE,
            category="rest",
            action="R",
            patient_key="pk-ü",
            entity="Observation/o-1",
            purpose="TREAT",
            description='read "x"\\ \n\t\u0001',
            request_id="req-é",
            flags=["break-glass", "consent-override"],
            detail={"z": [1, "two", None, True, 2.5], "a": {"é": "\u2028"}, "n": 10**15},
        ),
        AuditEvent.for_principal(
            BOB, category="rest", action="C", entity="Patient/p", detail={}, request_id=None
        ),
        AuditEvent.for_principal(None, category="auth", action="E", outcome=4, flags="refused"),
        AuditEvent.for_principal(
            BOB, category="rest", action="D", entity="Patient/p", detail={"version": 3}
        ),
    ]


def test_prepared_hashes_are_event_hash() -> None:
    events = _events()
    rows, last_seq, last_hash = chain_rows(
        prepare_events(sqlite_dialect(), events), sqlite_dialect(), 41, "cd" * 32, AT
    )
    prev = "cd" * 32
    for seq, (event, row) in enumerate(zip(events, rows, strict=True), start=42):
        expected = event.row(seq=seq, recorded_at=AT, prev_hash=prev)
        assert row[-4:] == (seq, "2026-11-24 01:02:03.456789", prev, expected["hash"])
        assert expected["hash"] == event_hash(prev, expected)
        prev = expected["hash"]
    assert (last_seq, last_hash) == (46, prev)


def _sqlite(folder: Path) -> Database:
    db = create_database(f"sqlite:///{folder / 'salus.db'}")
    migrate(db)
    return db


def _stored(db: Database) -> list[tuple[Any, ...]]:
    names = [column.name for column in audit_events.columns]
    probe = ", ".join(f'"{n}", typeof("{n}")' for n in names)
    with db.read() as conn:
        sql = f'SELECT {probe} FROM "audit_events" ORDER BY "seq"'  # noqa: S608 - table's names
        return [tuple(row) for row in conn.execute(text(sql))]


def test_stored_rows_equal_the_sqlalchemy_path(tmp_path: Path) -> None:
    (tmp_path / "new").mkdir()
    (tmp_path / "ref").mkdir()
    new, ref = _sqlite(tmp_path / "new"), _sqlite(tmp_path / "ref")
    try:
        log = AuditLog(new, clock=lambda: AT)
        events = _events()
        with new.write() as conn:  # the head row made by the first append
            assert log.append(conn, events[:1]) == [1]
        with new.write() as conn:  # prepared before, as FhirStore.encode does
            assert log.append(conn, prepare_events(conn.dialect, events[1:])) == [2, 3, 4, 5]
        assert log.record_batch(events[1:3]) == [6, 7]  # the group commit's path
        reference: list[dict[str, Any]] = []
        prev = GENESIS_HASH
        for seq, event in enumerate([*events, *events[1:3]], start=1):
            reference.append(event.row(seq=seq, recorded_at=AT, prev_hash=prev))
            prev = reference[-1]["hash"]
        with ref.write() as conn:
            conn.execute(insert(audit_events), reference)
        stored = _stored(new)
        assert len(stored) == 7
        assert stored == _stored(ref)
        report = verify_chain(new)
        assert report.ok and report.events_checked == 7
        assert log.head() == (7, prev)
    finally:
        new.dispose()
        ref.dispose()


def test_prepared_events_are_a_sequence_of_the_events() -> None:
    events = _events()
    first = prepare_events(sqlite_dialect(), events[:2])
    second = prepare_events(sqlite_dialect(), events[2:])
    joined = PreparedEvents.concat([first, second])
    assert list(joined) == events and len(joined) == 5 and joined[3] is events[3]
    assert joined.parts == [*first.parts, *second.parts]
    assert prepare_events(sqlite_dialect(), joined) is joined
    calls: list[int] = []  # the write gate's checkpoint, before each event
    again = prepare_events(sqlite_dialect(), events, lambda: calls.append(len(calls)))
    assert calls == [0, 1, 2, 3, 4] and again.parts == joined.parts


def test_create_groups_chain_and_verify(db: Database) -> None:
    """Two create batches encoded before the lock (their audit prepared on
    SQLite) and written as one group: one event per resource, in order, and a
    chain that verifies, on both backends."""
    store = build_fhir_store(None, AuditLog(db))
    batches = []
    for n in range(2):
        items: list[tuple[dict[str, Any], str | None]] = [
            (
                {"resourceType": "Patient", "gender": "female", "birthDate": f"19{i}0-01-0{n + 1}"},
                None,
            )
            for i in range(3)
        ]
        batch = store.prepare_creates(ALICE, items)
        store.encode(batch, db.engine.dialect)
        assert isinstance(batch.events, PreparedEvents) == db.is_sqlite
        batches.append(batch)
    assert isinstance(merge_prepared(batches).events, PreparedEvents) == db.is_sqlite
    with db.write() as conn:
        stored = store.commit_create_groups(conn, batches)
    entities = [f"Patient/{s.res_id}" for group in stored for s in group]
    with db.read() as conn:
        rows = conn.execute(
            text('SELECT "seq", "entity", "action" FROM "audit_events" ORDER BY "seq"')
        ).all()
    assert [(r[1], r[2]) for r in rows] == [(e, "C") for e in entities]
    assert [int(r[0]) for r in rows] == list(range(1, 7))
    report = verify_chain(db)
    assert report.ok and report.events_checked == 6


@pytest.mark.parametrize("size", [1, 3])
def test_a_failed_append_leaves_nothing(tmp_path: Path, size: int) -> None:
    """An insert error (here: seq taken) fails the caller's transaction with
    the database's error, parameters hidden, and moves no head."""
    db = _sqlite(tmp_path)
    try:
        log = AuditLog(db, clock=lambda: AT)
        events = _events()[:size]
        log.record(events)
        with db.write() as conn:  # a row at the next seq, the head left behind
            conn.execute(
                insert(audit_events),
                [events[0].row(seq=size + 1, recorded_at=AT, prev_hash="0" * 64)],
            )
        with pytest.raises(DBAPIError) as caught, db.write() as conn:
            log.append(conn, events)
        assert "pk-" not in str(caught.value)
        assert log.head().seq == size
    finally:
        db.dispose()
