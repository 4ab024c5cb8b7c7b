"""A create group as one PostgreSQL statement (salus.fhir.pgcreate, ADR 21
stop-15 amendment): the same rows as the store's inserts, each resource's
audit event in the chain, all or nothing, and the group commit using it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import Table, func, select
from sqlalchemy.exc import DBAPIError

from salus.audit import verify_chain
from salus.audit.events import AuditEvent
from salus.db.tables import audit_events, fhir_history, fhir_resources, metadata
from salus.errors import Unavailable
from salus.fhir import pgcreate
from salus.fhir.groupcommit import CreateGroup
from salus.fhir.prepare import PreparedCreates
from salus.fhir.store import Stored
from salus.security.policy import RecordFilter
from salus.security.principal import Principal, PrincipalKind
from tests.conftest import BACKENDS
from tests.integration.security_world import World, make_world
from tests.integration.test_fhir_group_commit import run_queued

FEED = Principal(PrincipalKind.CLIENT, "a-feed", "hosp-a", client_id="a-feed")
INDEX_TABLES = [t for t in metadata.sorted_tables if t.name.startswith("fhir_idx_")]


def patient(n: int) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.3", "value": f"MRN-{n}"}],
        "name": [{"family": f"Stmt{n}", "given": ["Ann", "Zoë"]}],
        "gender": "female",
        "birthDate": "1970-01-02",
        "address": [{"line": ["1 Main St"], "city": "Town", "postalCode": "12345"}],
        "telecom": [{"system": "phone", "value": "555-0100"}],
    }


def observation(subject: str) -> dict[str, Any]:
    """Token, reference, date, quantity, number-like and composite index rows."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
        "subject": {"reference": subject},
        "effectiveDateTime": "2024-05-06T07:08:09Z",
        "valueQuantity": {
            "value": 120.5,
            "unit": "mmHg",
            "system": "http://unitsofmeasure.org",
            "code": "mm[Hg]",
        },
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                "valueQuantity": {"value": 80, "system": "http://unitsofmeasure.org"},
            }
        ],
    }


@pytest.fixture(scope="module", params=[BACKENDS[1]])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with make_world(request.param, tmp_path_factory.mktemp("pgcreate")) as built:
        yield built


def copied(batch: PreparedCreates) -> PreparedCreates:
    """The same prepared batch, rows copied (writing fills in rids)."""
    return replace(
        batch,
        rows=[dict(row) for row in batch.rows],
        index_rows=[
            {table: [dict(v) for v in values] for table, values in tables.items()}
            for tables in batch.index_rows
        ],
    )


def snapshot(world: World, stored: list[Stored]) -> dict[str, Any]:
    """Every row of ``stored``'s resources, without their rids."""
    out: dict[str, Any] = {}
    with world.services.db.read() as conn:
        for one in stored:
            row = (
                conn.execute(
                    select(fhir_resources).where(
                        fhir_resources.c.res_type == one.res_type,
                        fhir_resources.c.res_id == one.res_id,
                    )
                )
                .mappings()
                .one()
            )
            rid = row["rid"]
            tables: list[Table] = [fhir_history, *INDEX_TABLES]
            found: dict[str, Any] = {"resource": {k: v for k, v in row.items() if k != "rid"}}
            for table in tables:
                rows = conn.execute(select(table).where(table.c.rid == rid)).mappings().all()
                found[table.name] = sorted(
                    repr(sorted((k, v) for k, v in r.items() if k != "rid")) for r in rows
                )
            out[f"{one.res_type}/{one.res_id}"] = found
    return out


def purge(world: World, stored: list[Stored]) -> None:
    store, db = world.services.fhir_store, world.services.db
    with db.write() as conn:
        for one in stored:
            store.purge(conn, one.res_type, one.res_id)


def test_one_statement_writes_the_rows_the_store_writes(world: World) -> None:
    """The same prepared creates written by the store's statements and by the
    one statement give identical resource, history and index rows."""
    services = world.services
    store, db = services.fhir_store, services.db
    batches = [store.prepare_creates(FEED, [(patient(n), None)]) for n in range(3)]
    batches.append(
        store.prepare_creates(
            FEED, [(observation("Patient/x1"), None), (observation("Patient/x2"), None)]
        )
    )
    again = [copied(b) for b in batches]
    with db.write() as conn:
        by_store = store.commit_create_groups(conn, batches)
    flat = [s for result in by_store for s in result]
    expected = snapshot(world, flat)
    purge(world, flat)
    by_statement = pgcreate.write_creates(db, store.audit, again)
    assert [[(s.res_type, s.res_id) for s in r] for r in by_statement] == [
        [(s.res_type, s.res_id) for s in r] for r in by_store
    ]
    got = snapshot(world, [s for result in by_statement for s in result])
    assert got == expected
    tables_written = {name for one in got.values() for name, rows in one.items() if rows}
    assert {"fhir_idx_token", "fhir_idx_string", "fhir_idx_date", "fhir_idx_quantity"} <= (
        tables_written
    )
    # Each resource has its own audit event per write, and the chain holds.
    with db.read() as conn:
        entities = list(
            conn.execute(
                select(audit_events.c.entity).where(audit_events.c.entity.in_(list(got)))
            ).scalars()
        )
    assert sorted(entities) == sorted([*got, *got])
    assert verify_chain(db).ok
    # Read back through the store: the bodies open (sealed with their own context).
    for result in by_statement:
        for one in result:
            read = store.read_from(db, RecordFilter(own_org="hosp-a"), one.res_type, one.res_id)
            assert read.resource is not None and read.resource["id"] == one.res_id


def test_events_travel_exactly(world: World) -> None:
    """The events go to ``salus_audit_append`` as one JSON text: Unicode,
    quotes, backslashes, control characters, floats, big integers and
    nesting are stored and hashed exactly as ``salus audit verify`` computes."""
    services = world.services
    store, db = services.fhir_store, services.db
    detail = {
        "f": 0.1,
        "tiny": 5e-324,
        "big": 2**70,
        "u": 'é😀\u2028\t\x01"\\',
        "nested": {"b": [1, {"z": None, "a": True}], "a": []},
    }
    batches = [store.prepare_creates(FEED, [(patient(n), None)]) for n in (50, 51)]
    batches[0].events = [
        AuditEvent.for_principal(
            FEED,
            category="rest",
            action="C",
            entity='Patient/ä"\\',
            description="Zoë’s record — ü\n",
            request_id="réq-😀",
            detail=detail,
        )
    ]
    result = pgcreate.write_creates(db, store.audit, batches)
    assert len(result) == 2
    with db.read() as conn:
        stored = conn.execute(
            select(audit_events.c.entity, audit_events.c.description, audit_events.c.detail)
            .order_by(audit_events.c.seq.desc())
            .limit(2)
        ).all()
    assert stored[1] == ('Patient/ä"\\', "Zoë’s record — ü\n", detail)
    assert stored[0][0] == f"Patient/{result[1][0].res_id}"
    assert verify_chain(db).ok


def counts(world: World) -> dict[str, int]:
    with world.services.db.read() as conn:
        return {
            t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
            for t in [fhir_resources, fhir_history, audit_events, *INDEX_TABLES]
        }


def test_a_failing_statement_writes_nothing(world: World) -> None:
    """A server-assigned id that is already taken (a unique violation) fails
    the whole statement: no resource, history, index or audit row, and the
    chain is intact; the error hides its parameters."""
    services = world.services
    store, db = services.fhir_store, services.db
    taken = pgcreate.write_creates(
        db, store.audit, [store.prepare_creates(FEED, [(patient(10), None)])]
    )[0][0]
    before = counts(world)
    good = store.prepare_creates(FEED, [(patient(11), None)])
    bad = store.prepare_creates(FEED, [(patient(12), None)])
    bad.rows[0]["res_id"] = taken.res_id  # as if the random id had collided
    with pytest.raises(DBAPIError) as caught:
        pgcreate.write_creates(db, store.audit, [good, bad])
    assert "Stmt12" not in str(caught.value) and "MRN-12" not in str(caught.value)
    assert counts(world) == before
    assert verify_chain(db).ok


def test_the_group_commit_uses_one_statement_and_retries_alone(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the group's transaction is the one statement; when it
    fails, each create is retried alone and only the bad one fails."""
    services = world.services
    store, db = services.fhir_store, services.db
    calls: list[int] = []
    real = pgcreate.write_creates

    def spy(database: Any, audit: Any, batches: Any) -> Any:
        calls.append(len(batches))
        return real(database, audit, batches)

    monkeypatch.setattr(pgcreate, "write_creates", spy)
    taken = CreateGroup(db, store).commit(store.prepare_creates(FEED, [(patient(20), None)]))[0]
    group = CreateGroup(db, store)
    jobs = [store.prepare_creates(FEED, [(patient(n), None)]) for n in (21, 22, 23)]
    jobs[1].rows[0]["res_id"] = taken.res_id
    results = run_queued(group, jobs)  # queue all three, then let them go together
    assert calls == [1, 3, 1, 1, 1]  # the lone create, the group, then each alone
    assert isinstance(results[1], DBAPIError)
    assert group.creates == 2
    for i in (0, 2):
        assert isinstance(results[i], list) and results[i][0].version == 1
    with db.read() as conn:
        names = conn.execute(
            select(func.count()).where(
                fhir_resources.c.res_id.in_([results[0][0].res_id, results[2][0].res_id])
            )
        ).scalar_one()
    assert names == 2
    assert verify_chain(db).ok


def test_without_the_append_function_nothing_is_written(world: World) -> None:
    """The audit append is part of the statement: without
    ``salus_audit_append`` (a database not migrated) the group is refused
    (503, run 'salus migrate') and no resource row is left behind."""
    services = world.services
    store, db = services.fhir_store, services.db
    signature = (
        "salus_audit_append(timestamptz, text, text[], text[], text[], text[], smallint[],"
        " text[], text[], text[], text[], text[], text[], text[], text[], text[], text[],"
        " text[], text[])"
    )
    with db.write() as conn:
        definition = conn.exec_driver_sql(
            f"SELECT pg_get_functiondef('{signature}'::regprocedure)"
        ).scalar_one()
        conn.exec_driver_sql(f"DROP FUNCTION {signature}")
    try:
        before = counts(world)
        with pytest.raises(Unavailable, match="salus migrate"):
            pgcreate.write_creates(
                db, store.audit, [store.prepare_creates(FEED, [(patient(30), None)])]
            )
        assert counts(world) == before
    finally:
        with db.write() as conn:
            conn.exec_driver_sql(definition)
    assert verify_chain(db).ok


def test_only_postgresql_and_server_ids_take_the_statement(world: World) -> None:
    store, db = world.services.fhir_store, world.services.db
    plain = store.prepare_creates(FEED, [(patient(40), None)])
    chosen = store.prepare_creates(FEED, [(patient(41), "chosen-41")])
    assert pgcreate.applies(db.engine, [plain])
    assert not pgcreate.applies(db.engine, [plain, chosen])  # its id needs a check first
