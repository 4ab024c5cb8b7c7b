"""Group commit of concurrent creates (salus.fhir.groupcommit, ADR 21) on
SQLite and PostgreSQL: shared transactions, each create's own result and
audit event, one bad create does not fail the others."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from salus.audit import verify_chain
from salus.db.tables import audit_events, fhir_resources
from salus.errors import Conflict
from salus.fhir.groupcommit import CreateGroup
from salus.fhir.store import Stored
from salus.security.principal import Principal, PrincipalKind
from tests.conftest import BACKENDS
from tests.integration.security_world import World, make_world

FEED = Principal(PrincipalKind.CLIENT, "a-feed", "hosp-a", client_id="a-feed")


def patient(n: int) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": f"Group{n}"}], "gender": "female"}


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with make_world(request.param, tmp_path_factory.mktemp("group")) as built:
        yield built


def run_queued(group: CreateGroup, jobs: list[Any]) -> list[list[Stored] | BaseException]:
    """Queue every job while the group's writer is held, then let them go: the
    first thread to get the writer writes them all."""
    results: list[list[Stored] | BaseException] = [[] for _ in jobs]

    def work(i: int) -> None:
        try:
            results[i] = group.commit(jobs[i])
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    with group._writer:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while len(group._queue) < len(jobs) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(group._queue) == len(jobs)
    for thread in threads:
        thread.join(10)
    return results


def test_concurrent_creates_share_one_transaction(world: World) -> None:
    services = world.services
    store, db = services.fhir_store, services.db
    group = CreateGroup(db, store)
    jobs = [store.prepare_creates(FEED, [(patient(n), None)]) for n in range(8)]
    results = run_queued(group, jobs)
    assert group.transactions == 1 and group.creates == 8
    stored = [r[0] for r in results if isinstance(r, list)]
    assert len(stored) == 8 and len({s.res_id for s in stored}) == 8
    for n, one in enumerate(stored):  # each request gets its own resource back
        assert one.resource["name"][0]["family"] == f"Group{n}"
        assert one.org_id == "hosp-a" and one.version == 1
    ids = [s.res_id for s in stored]
    with db.read() as conn:
        rows = conn.execute(
            select(func.count()).where(fhir_resources.c.res_id.in_(ids))
        ).scalar_one()
        events = conn.execute(
            select(audit_events.c.entity).where(
                audit_events.c.entity.in_([f"Patient/{i}" for i in ids])
            )
        ).scalars()
        assert rows == 8 and sorted(events) == sorted(f"Patient/{i}" for i in ids)
    assert verify_chain(db).ok


def test_a_bad_create_does_not_fail_its_group(world: World) -> None:
    services = world.services
    store, db = services.fhir_store, services.db
    taken = CreateGroup(db, store).commit(store.prepare_creates(FEED, [(patient(0), None)]))[0]
    group = CreateGroup(db, store)
    jobs = [
        store.prepare_creates(FEED, [(patient(1), None)]),
        store.prepare_creates(FEED, [(patient(2), taken.res_id)]),  # id already in use
        store.prepare_creates(FEED, [(patient(3), None)]),
    ]
    results = run_queued(group, jobs)
    assert isinstance(results[1], Conflict)
    good = [r for i, r in enumerate(results) if i != 1]
    assert all(isinstance(r, list) and len(r) == 1 for r in good)
    assert group.creates == 2  # the group failed, then each went on its own
    with db.read() as conn:
        for result in good:
            assert isinstance(result, list)
            found = conn.execute(
                select(func.count()).where(fhir_resources.c.res_id == result[0].res_id)
            ).scalar_one()
            assert found == 1
    assert verify_chain(db).ok


def test_http_creates_go_through_the_group(world: World) -> None:
    router = world.services.fhir_router
    before = router.creates.creates
    response = world.client.post(
        "/fhir/Patient",
        content=b'{"resourceType": "Patient", "gender": "male"}',
        headers=world.headers("a-feed", **{"Content-Type": "application/fhir+json"}),
    )
    assert response.status_code == 201, response.text
    assert router.creates.creates == before + 1


def test_creates_queued_while_the_database_is_busy_join_the_group(world: World) -> None:
    """SQLite: the group is taken once the database's writer lock is held, so
    the creates queued while another writer (another process, a Bundle, an
    audit batch) held it are written in the same transaction."""
    services = world.services
    store, db = services.fhir_store, services.db
    if not db.is_sqlite:
        pytest.skip("PostgreSQL writers do not share one writer lock")
    group = CreateGroup(db, store)
    jobs = [store.prepare_creates(FEED, [(patient(n), None)]) for n in (20, 21, 22)]
    results: list[Any] = [None] * len(jobs)

    def work(i: int) -> None:
        results[i] = group.commit(jobs[i])

    with db.writer_lock():  # another writer holds the database
        first = threading.Thread(target=work, args=(0,))
        first.start()  # becomes the group's leader and waits for the database
        deadline = time.monotonic() + 10
        while not group._writer.locked() and time.monotonic() < deadline:
            time.sleep(0.005)
        others = [threading.Thread(target=work, args=(i,)) for i in (1, 2)]
        for thread in others:
            thread.start()
        while len(group._queue) < len(jobs) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(group._queue) == len(jobs)
    for thread in [first, *others]:
        thread.join(10)
    assert all(isinstance(r, list) and len(r) == 1 for r in results)
    assert group.transactions == 1 and group.creates == 3
    assert verify_chain(db).ok
