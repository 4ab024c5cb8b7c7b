"""The audit trail on SQLite and PostgreSQL: appends, group commit, checkpoints,
FHIR rendering, search and access reports (the CLI: test_audit_cli.py)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from salus.audit import (
    AuditEvent,
    AuditLog,
    Ed25519Signer,
    RecordBatcher,
    patient_access_report,
    search_events,
    to_fhir,
    verify_chain,
)
from salus.db import Database
from salus.db.engine import WriterLock
from salus.db.tables import audit_checkpoints, audit_events, audit_head, jobs
from salus.errors import InvalidInput, Unavailable
from salus.security.principal import Principal, PrincipalKind, Purpose


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


ALICE = Principal(PrincipalKind.USER, "alice", "hospital-a", address="10.0.0.7")
BOB = Principal(PrincipalKind.CLIENT, "bob-ehr", "hospital-b", client_id="bob-ehr")


def read_event(principal: Principal | None = ALICE, patient: str = "pk-1", **kw: Any) -> AuditEvent:
    values: dict[str, Any] = {
        "category": "rest",
        "action": "R",
        "patient_key": patient,
        "entity": "Observation/obs-1",
        "purpose": Purpose.TREATMENT,
    }
    values.update(kw)
    return AuditEvent.for_principal(principal, **values)


def count(db: Database, table: Any = audit_events) -> int:
    with db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def seqs(db: Database) -> list[int]:
    with db.read() as conn:
        return [int(s) for s in conn.execute(select(audit_events.c.seq).order_by("seq")).scalars()]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def signer() -> Ed25519Signer:
    return Ed25519Signer.generate()


@pytest.fixture
def log(db: Database, signer: Ed25519Signer, tmp_path: Path, clock: Clock) -> AuditLog:
    return AuditLog(db, signer=signer, checkpoint_file=tmp_path / "audit" / "cp.log", clock=clock)


# -- appending --------------------------------------------------------------------------------


def test_empty_chain_verifies(db: Database, log: AuditLog) -> None:
    report = verify_chain(db, checkpoint_file=log.checkpoint_file)
    assert report.ok and report.events_checked == 0 and report.last_seq == 0
    assert log.head() == (0, "0" * 64)
    assert log.checkpoint() is None  # nothing to sign yet


def test_append_commits_with_the_change(db: Database, log: AuditLog, clock: Clock) -> None:
    with db.write() as conn:
        conn.execute(
            jobs.insert().values(
                kind="k",
                payload={},
                status="queued",
                max_attempts=1,
                run_at=clock.now,
                created_at=clock.now,
                updated_at=clock.now,
            )
        )
        assert log.append(conn, [read_event(), read_event(action="U")]) == [1, 2]
    assert log.append.__doc__  # documented
    assert log.record([read_event()]) == [3]
    assert log.record([]) == []
    assert seqs(db) == [1, 2, 3]
    with db.read() as conn:
        rows = conn.execute(select(audit_events).order_by("seq")).mappings().all()
        head = conn.execute(select(audit_head)).mappings().one()
    assert rows[0]["prev_hash"] == "0" * 64
    assert [r["prev_hash"] for r in rows[1:]] == [r["hash"] for r in rows[:-1]]
    assert (head["seq"], head["hash"]) == (3, rows[-1]["hash"])
    assert rows[0]["recorded_at"] == clock.now
    assert rows[0]["principal_id"] == "alice" and rows[0]["purpose"] == "TREAT"
    assert verify_chain(db).ok


def test_rolled_back_append_leaves_nothing(db: Database, log: AuditLog) -> None:
    with pytest.raises(ZeroDivisionError), db.write() as conn:
        log.append(conn, [read_event()])
        1 / 0  # noqa: B018 - the change being audited fails
    assert count(db) == 0 and count(db, audit_head) == 0
    assert log.record([read_event()]) == [1]
    with pytest.raises(ZeroDivisionError), db.write() as conn:
        assert log.append(conn, [read_event(), read_event()]) == [2, 3]
        1 / 0  # noqa: B018
    assert log.record([read_event()]) == [2]
    assert seqs(db) == [1, 2] and log.head().seq == 2
    assert verify_chain(db).ok


def test_stored_values_hash_the_same_after_a_round_trip(db: Database, log: AuditLog) -> None:
    """Unicode, floats, big integers and nesting come back exactly as hashed."""
    detail = {
        "f": 0.1,
        "tiny": 5e-324,
        "huge": 1.5e300,
        "big": 2**70,
        "neg": -3,
        "u": 'é😀\u2028\t"\\',
        "nested": {"b": [1, {"z": None, "a": True}], "a": []},
    }
    event = read_event(description="Zoë’s record — ü", entity="Patient/ä", detail=detail)
    log.record([event, read_event(detail={})])
    log.record_batch([event, read_event(detail={})])  # the group commit's statement
    with db.read() as conn:
        stored = conn.execute(select(audit_events.c.detail).order_by("seq")).scalars().all()
    assert stored == [detail, {}, detail, {}]
    assert verify_chain(db).ok


def test_record_is_one_statement_on_postgresql(db: Database, log: AuditLog) -> None:
    """PostgreSQL appends through ``salus_audit_append`` (migration 0015): one
    autocommit statement per batch, hashed as :func:`event_hash` does, and
    inside a write transaction too (the chain continues)."""
    from sqlalchemy import event as sa_event

    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    sa_event.listen(db.engine, "before_cursor_execute", seen)
    try:
        log.record([read_event(request_id="req-1", detail={"q": 'a"b'}), read_event()])
        statements.clear()
        assert log.record([read_event(flags="refused"), read_event(action="U")]) == [3, 4]
    finally:
        sa_event.remove(db.engine, "before_cursor_execute", seen)
    if db.is_sqlite:
        # BEGIN IMMEDIATE and the head through SQLAlchemy; the insert and the
        # head's move on the DBAPI cursor (salus.audit.sqliteappend), then COMMIT.
        assert len(statements) == 2
    else:
        assert len(statements) == 1 and "salus_audit_append" in statements[0]
    with db.write() as conn:
        assert log.append(conn, [read_event()]) == [5]
    assert log.record([read_event(description="ü")]) == [6]
    report = verify_chain(db)
    assert report.ok and report.events_checked == 6


def test_postgresql_without_the_append_function_is_refused(db: Database, log: AuditLog) -> None:
    """No second implementation of the append on PostgreSQL: a database that
    was not migrated to 0015 is refused (503: run ``salus migrate``), nothing
    written, in autocommit and inside a write transaction alike (ADR 21)."""
    if db.is_sqlite:
        pytest.skip("salus_audit_append is PostgreSQL's; SQLite appends in Python")
    log.record([read_event()])
    with db.write() as conn:
        conn.exec_driver_sql(
            "DROP FUNCTION salus_audit_append(timestamptz, text, text[], text[], text[],"
            " text[], smallint[], text[], text[], text[], text[], text[], text[], text[],"
            " text[], text[], text[], text[], text[])"
        )
    with pytest.raises(Unavailable, match="salus migrate"):
        log.record([read_event()])
    with pytest.raises(Unavailable, match="salus migrate"):  # the group commit's path
        log.record_batch([read_event(), read_event()])
    with pytest.raises(Unavailable), db.write() as conn:
        log.append(conn, [read_event()])
    assert count(db) == 1
    assert log.record_batch([]) == []
    assert verify_chain(db).ok


def test_append_needs_a_transaction(db: Database, log: AuditLog) -> None:
    with db.engine.connect() as conn, pytest.raises(RuntimeError):
        log.append(conn, [read_event()])
    if db.is_sqlite:  # a deferred SQLite transaction is not exclusive
        with db.read() as conn, pytest.raises(RuntimeError):
            log.append(conn, [read_event()])
    with db.write() as conn, pytest.raises(InvalidInput):
        log.append(conn, ["not an event"])  # type: ignore[list-item]
    assert count(db) == 0


def test_concurrent_appends_from_threads(db: Database) -> None:
    log = AuditLog(db)
    threads, per_thread = 8, 15
    results: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def work(n: int) -> None:
        try:
            barrier.wait()  # all start on the empty chain: the head is created once
            for i in range(per_thread):
                if i % 3 == 0:
                    with db.write() as conn:
                        results.append(log.append(conn, [read_event(), read_event(action="U")]))
                else:
                    results.append(log.record([read_event(patient=f"pk-{n}")]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors
    total = threads * per_thread + threads * 5  # every third call appended two
    assigned = sorted(s for batch in results for s in batch)
    assert assigned == list(range(1, total + 1))
    assert all(batch == list(range(batch[0], batch[0] + len(batch))) for batch in results)
    assert seqs(db) == assigned and count(db, audit_head) == 1
    report = verify_chain(db, batch_size=17)
    assert report.ok and report.events_checked == total


# -- group commit -----------------------------------------------------------------------------


def test_group_commit_batcher(db: Database, log: AuditLog) -> None:
    n = 300

    async def one(i: int) -> int:
        seq = await log.record_async(read_event(patient=f"pk-{i % 7}"))
        with db.read() as conn:  # durable before the caller goes on
            assert conn.execute(select(audit_events.c.seq).where(audit_events.c.seq == seq)).first()
        return seq

    async def main() -> tuple[list[int], int]:
        await log.start()
        try:
            assert log.batcher is not None and log.batcher.running
            got = await asyncio.gather(*(one(i) for i in range(n)))
            flushes = log.batcher.flushes
        finally:
            await log.stop()
        assert log.batcher is None
        # After stop (and before start) events are still written, one by one.
        got.append(await log.record_async(read_event()))
        return got, flushes

    got, flushes = asyncio.run(main())
    assert sorted(got) == list(range(1, n + 2)) and len(set(got)) == n + 1
    assert 1 <= flushes < n / 5  # grouped: far fewer transactions than events
    report = verify_chain(db)
    assert report.ok and report.events_checked == n + 1


def test_batcher_isolates_a_failing_event(db: Database, log: AuditLog) -> None:
    calls: list[int] = []

    def record(events: Any) -> list[int]:
        calls.append(len(events))
        if any(e.description == "poison" for e in events):
            raise RuntimeError("simulated database failure")
        return log.record(events)

    async def main() -> list[Any]:
        batcher = RecordBatcher(record, max_batch=50, max_delay=0.01)
        await batcher.start()
        try:
            items = [read_event(description="poison" if i == 5 else None) for i in range(10)]
            return await asyncio.gather(*(batcher.submit(e) for e in items), return_exceptions=True)
        finally:
            await batcher.stop()
            with pytest.raises(Unavailable):
                await batcher.submit(read_event())

    outcomes = asyncio.run(main())
    assert isinstance(outcomes[5], Unavailable)
    good = [o for i, o in enumerate(outcomes) if i != 5]
    assert sorted(good) == list(range(1, 10))
    assert calls[0] == 10 and len(calls) == 11  # one batch, then one by one
    assert count(db) == 9 and verify_chain(db).ok


def test_batcher_stop_drains_the_queue(db: Database, log: AuditLog) -> None:
    async def main() -> list[int]:
        batcher = RecordBatcher(log.record, max_batch=4, max_delay=1.0)
        await batcher.start()
        tasks = [asyncio.create_task(batcher.submit(read_event())) for _ in range(10)]
        await asyncio.sleep(0)  # queued, waiting for company
        await batcher.stop()  # does not wait the full delay, writes everything
        return [await t for t in tasks]

    assert sorted(asyncio.run(main())) == list(range(1, 11))
    assert verify_chain(db).ok


def test_record_batch_stores_what_record_stores(db: Database, log: AuditLog, clock: Clock) -> None:
    """The group commit's append (SQLite: compiled statements on the DBAPI
    connection) stores the same rows as the general path, from an empty chain
    (no head yet) on, and the chain verifies."""
    detail = {"q": 'a "quoted" Ünïcode value', "n": [1, 2]}
    assert log.record_batch([read_event(patient="pk-1")]) == [1]  # creates the head
    assert log.record([read_event(patient="pk-2")]) == [2]
    clock.advance(seconds=1.5)
    batch = [read_event(patient=f"pk-{i}") for i in range(3)]
    batch.append(AuditEvent(category="rest", action="R", entity="Patient/x", detail=detail))
    assert log.record_batch(batch) == [3, 4, 5, 6]
    assert log.record_batch([]) == []
    with db.read() as conn:
        rows = conn.execute(select(audit_events).order_by(audit_events.c.seq)).mappings().all()
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[2]["recorded_at"] == clock.now and rows[1]["recorded_at"] < clock.now
    assert rows[2]["recorded_at"].tzinfo is not None and rows[2]["patient_key"] == "pk-0"
    assert rows[5]["detail"] == detail and rows[3]["prev_hash"] == rows[2]["hash"]
    if db.is_sqlite:  # the same text form of recorded_at as SQLAlchemy writes
        with db.read() as conn:
            stored = [v for (v,) in conn.exec_driver_sql("SELECT recorded_at FROM audit_events")]
        assert len({len(v) for v in stored}) == 1, stored
    assert log.head() == (6, rows[5]["hash"])
    report = verify_chain(db)
    assert report.ok and report.events_checked == 6


def test_batcher_takes_its_batch_once_the_gate_opens(db: Database, log: AuditLog) -> None:
    """Events queued while the writer waits for its gate (SQLite: the other worker's
    commit) join the batch it writes, instead of waiting for the next one."""
    gate = threading.Lock()

    async def main() -> tuple[list[int], int, int]:
        batcher = RecordBatcher(log.record, max_batch=50, max_delay=0.0, gate=lambda: gate)
        await batcher.start()
        gate.acquire()
        try:
            first = asyncio.create_task(batcher.submit(read_event()))
            await asyncio.sleep(0.05)  # its writer thread is waiting at the gate
            rest = [asyncio.create_task(batcher.submit(read_event())) for _ in range(5)]
            await asyncio.sleep(0.01)
            assert not first.done()
        finally:
            gate.release()
        seqs = await asyncio.gather(first, *rest)
        await batcher.stop()
        return list(seqs), batcher.flushes, batcher.events_flushed

    seqs, flushes, events = asyncio.run(main())
    assert sorted(seqs) == list(range(1, 7))
    assert (flushes, events) == (1, 6)  # one transaction for all six
    assert verify_chain(db).ok


def test_audit_batches_without_a_usable_append_lock(
    db: Database, signer: Ed25519Signer, tmp_path: Path
) -> None:
    """The append lock only groups events: if its file cannot be made, the
    server still records every event (batches queue on the head row)."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    log = AuditLog(db, signer=signer, append_lock=blocker / "append.lock")

    async def main() -> list[int]:
        await log.start()
        try:
            return list(await asyncio.gather(*(log.record_async(read_event()) for _ in range(5))))
        finally:
            await log.stop()

    assert sorted(asyncio.run(main())) == [1, 2, 3, 4, 5]
    assert verify_chain(db).ok


def test_audit_batch_waits_for_the_other_workers_append(
    db: Database, signer: Ed25519Signer, tmp_path: Path
) -> None:
    """The server's group commit takes its batch once the lock its processes
    share is free: SQLite's writer lock, on PostgreSQL the append lock file."""
    lock_file = tmp_path / "audit" / "append.lock"
    log = AuditLog(db, signer=signer, append_lock=lock_file)
    held, release = threading.Event(), threading.Event()

    def other_worker() -> None:  # another worker process's commit, in effect
        lock = db.writer_lock() if db.is_sqlite else WriterLock(lock_file)
        with lock:
            held.set()
            release.wait(5)

    thread = threading.Thread(target=other_worker)

    async def main() -> tuple[list[int], int]:
        await log.start()  # makes the lock file's folder (a server's start-up)
        thread.start()
        assert held.wait(5)
        try:
            assert log.batcher is not None
            first = asyncio.create_task(log.record_async(read_event()))
            await asyncio.sleep(0.05)
            rest = [asyncio.create_task(log.record_async(read_event())) for _ in range(3)]
            await asyncio.sleep(0.01)
            assert not first.done()  # not durable yet: the lock is held
            release.set()
            seqs = await asyncio.gather(first, *rest)
            return list(seqs), log.batcher.flushes
        finally:
            release.set()
            await log.stop()

    seqs, flushes = asyncio.run(main())
    thread.join(5)
    assert sorted(seqs) == [1, 2, 3, 4] and flushes == 1
    assert verify_chain(db).ok
    assert db.is_sqlite or lock_file.exists()


# -- checkpoints ------------------------------------------------------------------------------


def test_checkpoints(db: Database, log: AuditLog, signer: Ed25519Signer, clock: Clock) -> None:
    assert log.checkpoint_file is not None
    log.record([read_event() for _ in range(10)])
    first = log.checkpoint()
    assert first is not None and (first.seq, first.kid) == (10, signer.kid)
    assert first.hash == log.head().hash and first.created_at == clock.now
    assert first.verify(signer)
    assert log.checkpoint() is None  # the head has not moved
    clock.advance(minutes=1)
    log.record([read_event() for _ in range(5)])
    second = log.checkpoint()
    assert second is not None and second.seq == 15
    lines = log.checkpoint_file.read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [10, 15]
    assert oct(log.checkpoint_file.stat().st_mode & 0o777) == oct(0o600)
    with db.read() as conn:
        rows = conn.execute(select(audit_checkpoints).order_by("seq")).mappings().all()
    assert [(r["seq"], r["hash"], r["signature"]) for r in rows] == [
        (10, first.hash, first.signature),
        (15, second.hash, second.signature),
    ]
    report = verify_chain(db, signer=signer, checkpoint_file=log.checkpoint_file)
    assert report.ok and report.signatures_checked
    assert (report.checkpoints_checked, report.file_checkpoints_checked) == (2, 2)
    unsigned = verify_chain(db, checkpoint_file=log.checkpoint_file)
    assert unsigned.ok and not unsigned.signatures_checked
    assert "checkpoint signatures not checked (no signer configured)" in unsigned.notes
    assert AuditLog(db).checkpoint() is None  # no signer: no checkpoint


def test_periodic_checkpoints_in_the_lifespan(
    db: Database, signer: Ed25519Signer, tmp_path: Path
) -> None:
    log = AuditLog(db, signer=signer, checkpoint_file=tmp_path / "cp.log")

    async def main() -> None:
        await log.start(checkpoint_interval=0.05)
        await log.record_async(read_event())
        for _ in range(100):
            if count(db, audit_checkpoints):
                break
            await asyncio.sleep(0.02)
        await log.record_async(read_event())
        await log.stop()  # signs a last checkpoint of the head

    asyncio.run(main())
    assert [json.loads(x)["seq"] for x in (tmp_path / "cp.log").read_text().splitlines()] == [1, 2]
    assert verify_chain(db, signer=signer, checkpoint_file=tmp_path / "cp.log").ok


# -- FHIR, search, access report --------------------------------------------------------------

FHIR_INSTANT = re.compile(
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)"
    r"(\.\d{1,9})?(Z|[+-]((0\d|1[0-3]):[0-5]\d|14:00))$"
)
AUDIT_EVENT_ELEMENTS = {
    "resourceType",
    "id",
    "meta",
    "extension",
    "type",
    "subtype",
    "action",
    "period",
    "recorded",
    "outcome",
    "outcomeDesc",
    "purposeOfEvent",
    "agent",
    "source",
    "entity",
}
AGENT_ELEMENTS = {
    "type",
    "role",
    "who",
    "altId",
    "name",
    "requestor",
    "location",
    "policy",
    "media",
    "network",
    "purposeOfUse",
}


def check_coding(coding: Any) -> None:
    assert isinstance(coding, dict) and set(coding) <= {"system", "code", "display"}
    assert coding["system"].startswith(("http://", "https://")) and coding["code"]


def check_audit_event(resource: dict[str, Any]) -> None:
    """Structural check against FHIR R4 AuditEvent (elements and cardinalities)."""
    assert resource["resourceType"] == "AuditEvent"
    assert set(resource) <= AUDIT_EVENT_ELEMENTS
    assert re.match(r"^[A-Za-z0-9\-.]{1,64}$", resource["id"])
    check_coding(resource["type"])  # 1..1 Coding
    for sub in resource.get("subtype", []):
        check_coding(sub)
    assert resource.get("action") in {"C", "R", "U", "D", "E"}
    assert FHIR_INSTANT.match(resource["recorded"])  # 1..1 instant
    assert resource.get("outcome") in {"0", "4", "8", "12"}
    agents = resource["agent"]  # 1..*
    assert isinstance(agents, list) and agents
    for agent in agents:
        assert set(agent) <= AGENT_ELEMENTS
        assert isinstance(agent["requestor"], bool)  # 1..1
        for purpose in agent.get("purposeOfUse", []):
            for coding in purpose["coding"]:
                check_coding(coding)
        if "network" in agent:
            assert agent["network"]["type"] in {"1", "2", "3", "4", "5"}
    assert sum(agent["requestor"] for agent in agents) == 1
    source = resource["source"]  # 1..1, observer 1..1
    assert source["observer"]
    for kind in source.get("type", []):
        check_coding(kind)
    for entity in resource.get("entity", []):
        assert set(entity) <= {
            "what",
            "type",
            "role",
            "lifecycle",
            "securityLabel",
            "name",
            "description",
            "query",
            "detail",
        }
    json.dumps(resource)  # serialisable


def test_fhir_rendering(db: Database, log: AuditLog) -> None:
    log.record(
        [
            read_event(ALICE, "pk-9", request_id="req-1", description="read"),
            AuditEvent.for_principal(
                None,
                category="auth",
                action="E",
                outcome=4,
                entity="POST /auth/token",
                description="refused",
            ),
            AuditEvent.for_principal(
                BOB,
                category="rest",
                action="E",
                entity="Observation?code=x",
                detail={"interaction": "search-type"},
            ),
            AuditEvent.for_principal(
                BOB,
                category="dicom",
                action="C",
                patient_key="pk-9",
                purpose="TREAT",
                flags=["break-glass"],
            ),
        ]
    )
    rows = {row["seq"]: row for row in search_events(db)}
    read, refused, search, store = (to_fhir(rows[i]) for i in (1, 2, 3, 4))
    for resource in (read, refused, search, store):
        check_audit_event(resource)
    assert read["id"] == "1"
    assert read["type"] == {
        "system": "http://dicom.nema.org/resources/ontology/DCM",
        "code": "110110",
        "display": "Patient Record",
    }
    assert read["subtype"] == [
        {"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}
    ]
    assert read["action"] == "R" and read["outcome"] == "0"
    assert read["recorded"] == "2026-11-23T08:00:00.000000Z"
    agent = read["agent"][0]
    assert agent["requestor"] is True
    assert agent["who"]["identifier"] == {"system": "urn:salus:user", "value": "alice"}
    assert agent["network"] == {"address": "10.0.0.7", "type": "2"}
    assert agent["purposeOfUse"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
        "code": "TREAT",
        "display": "treatment",
    }
    assert read["agent"][1]["who"]["identifier"]["value"] == "hospital-a"
    assert read["source"]["observer"] == {"display": "Salus"}
    patient, what, request = read["entity"]
    assert patient["what"] == {"reference": "Patient/pk-9"}
    assert patient["role"]["code"] == "1"
    assert what["what"] == {"reference": "Observation/obs-1"}
    assert request["what"]["identifier"]["value"] == "req-1"
    assert {"url": "urn:salus:audit:hash", "valueString": rows[1]["hash"]} in read["extension"]

    assert refused["type"]["code"] == "110114" and refused["outcome"] == "4"
    assert refused["agent"] == [{"requestor": True, "who": {"display": "unauthenticated"}}]
    assert refused["outcomeDesc"] == "refused"
    assert search["type"]["code"] == "rest"
    assert search["subtype"][0]["code"] == "search-type"
    assert search["entity"][0]["what"] == {"display": "Observation?code=x"}
    assert store["type"]["code"] == "110104" and "subtype" not in store
    assert {"url": "urn:salus:audit:flags", "valueString": "break-glass"} in store["extension"]


def test_search_and_patient_access_report(db: Database, log: AuditLog, clock: Clock) -> None:
    start = clock.now
    log.record([read_event(ALICE, "pk-1")])  # seq 1, day 0
    clock.advance(days=1)
    log.record([read_event(BOB, "pk-1", purpose=Purpose.RESEARCH)])  # seq 2, day 1
    clock.advance(days=1)
    log.record([read_event(ALICE, "pk-2", action="U")])  # seq 3, day 2
    clock.advance(days=1)
    log.record(
        [  # seq 4, day 3: break-the-glass
            AuditEvent.for_principal(
                BOB,
                category="security",
                action="E",
                patient_key="pk-1",
                purpose=Purpose.EMERGENCY,
                flags=["break-glass"],
                entity="BreakGlass/1",
            ),
        ]
    )
    clock.advance(days=1)
    log.record([read_event(None, "pk-1", outcome=4, description="refused")])  # seq 5, day 4

    def found(**filters: Any) -> list[int]:
        return [int(row["seq"]) for row in search_events(db, **filters)]

    assert found() == [5, 4, 3, 2, 1]  # newest first
    assert found(patient_key="pk-1") == [5, 4, 2, 1]
    assert found(principal_id="alice") == [3, 1]
    assert found(org_id="hospital-b") == [4, 2]
    assert found(patient_key="pk-1", org_id="hospital-b") == [4, 2]
    assert found(since=start + timedelta(days=1)) == [5, 4, 3, 2]  # inclusive
    assert found(until=start + timedelta(days=2)) == [2, 1]  # exclusive
    assert found(since=start + timedelta(days=1), until=start + timedelta(days=3)) == [3, 2]
    assert found(outcome=4) == [5] and found(outcome=0, patient_key="pk-2") == [3]
    assert found(category="security") == [4]
    assert found(limit=2) == [5, 4] and found(limit=2, offset=2) == [3, 2]
    assert found(patient_key="nobody") == []
    with pytest.raises(InvalidInput):
        search_events(db, limit=0)

    report = patient_access_report(db, "pk-1")
    assert [e["seq"] for e in report] == [5, 4, 2, 1]
    refused, btg, research, treat = report
    assert treat == {
        "seq": 1,
        "time": "2026-11-23T08:00:00.000000Z",
        "principal": "user/alice",
        "principal_kind": "user",
        "principal_id": "alice",
        "org_id": "hospital-a",
        "client_id": None,
        "address": "10.0.0.7",
        "purpose": "TREAT",
        "category": "rest",
        "action": "R",
        "outcome": 0,
        "entity": "Observation/obs-1",
        "description": None,
        "flags": [],
        "break_glass": False,
    }
    assert research["principal"] == "client/bob-ehr" and research["purpose"] == "HRESCH"
    assert btg["break_glass"] and btg["flags"] == ["break-glass"] and btg["purpose"] == "ETREAT"
    assert refused["principal"] is None and refused["outcome"] == 4
    assert [e["seq"] for e in patient_access_report(db, "pk-1", start + timedelta(days=2))] == [
        5,
        4,
    ]
    assert patient_access_report(db, "pk-1", limit=1)[0]["seq"] == 5
    assert patient_access_report(db, "pk-3") == []
