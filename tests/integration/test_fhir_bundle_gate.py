"""SQLite transaction Bundles of creates: their inserts run as the write
gate's holder (other threads' preparation waits at its checkpoints), and the
Bundles prepared while the write lock is held are written together in the
next transaction, each still all or nothing. Neither on PostgreSQL (ADR 21,
stop-15 amendment)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from salus.audit.verify import verify_chain
from salus.db.tables import fhir_resources
from salus.errors import Conflict
from salus.fhir import bundle as bundle_module
from salus.fhir.bundle import BundleProcessor
from salus.fhir.writegate import GATE
from tests.conftest import BACKENDS
from tests.integration.security_world import SYSTEM, World, make_world


@pytest.fixture(params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    with make_world(request.param, tmp_path) as built:
        yield built


def _bundle(count: int, family: str = "Nguyen") -> bytes:
    entries = [
        {
            "resource": {
                "resourceType": "Patient",
                "identifier": [{"system": "urn:hosp-a:mrn", "value": f"G-{uuid.uuid4().hex[:8]}"}],
                "name": [{"family": family}],
            },
            "request": {"method": "POST", "url": "Patient"},
        }
        for _ in range(count)
    ]
    return json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}).encode()


def test_bundle_inserts_hold_the_gate_on_sqlite_only(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = world.services.fhir_store
    original = store.commit_creates
    holders: list[bool] = []

    def commit_creates(conn: Any, batch: Any) -> Any:
        holders.append(GATE.holder == threading.get_ident())
        return original(conn, batch)

    monkeypatch.setattr(store, "commit_creates", commit_creates)
    response = world.client.post(
        "/fhir",
        content=_bundle(3),
        headers={**world.headers("a-feed"), "Content-Type": "application/fhir+json"},
    )
    assert response.status_code == 200, response.text
    assert [e["response"]["status"] for e in response.json()["entry"]] == ["201 Created"] * 3
    assert holders == [world.services.db.is_sqlite]
    assert GATE.holder is None  # left after the transaction


def _process(world: World, body: bytes) -> dict[str, Any]:
    def no_match(*_: Any) -> Any:
        raise AssertionError("a creates-only Bundle matches nothing")

    services = world.services
    processor = BundleProcessor(services.db, services.fhir_store, services.policy)
    return processor.process(json.loads(body), SYSTEM, None, "http://test/fhir", no_match)


def _stored_ids(world: World) -> set[str]:
    with world.services.db.read() as conn:
        rows = conn.execute(select(fhir_resources.c.res_id)).scalars()
        return {str(r) for r in rows}


def _wait(condition: Any) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _record_groups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of Bundles of each transaction the Bundle group writes."""
    groups: list[int] = []
    real_commit = bundle_module._BundleGroup._commit  # noqa: SLF001

    def commit(self: Any, batches: Any) -> Any:
        groups.append(len(batches))
        return real_commit(self, batches)

    monkeypatch.setattr(bundle_module._BundleGroup, "_commit", commit)  # noqa: SLF001
    return groups


def _start(world: World, bodies: dict[str, bytes], results: dict[str, Any]) -> dict[str, Any]:
    def post(key: str) -> None:
        try:
            results[key] = _process(world, bodies[key])
        except Exception as exc:  # noqa: BLE001 - the test checks which one failed
            results[key] = exc

    return {k: threading.Thread(target=post, args=(k,), daemon=True) for k in bodies}


def _group(world: World) -> Any:
    return world.services.fhir_store.bundle_group


def test_bundles_ready_while_the_lock_is_held_share_one_transaction(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three Bundles queued while another writer holds the write lock: the
    first one's thread takes the group once it holds the lock, so all three are
    written together; each Bundle's own poisoned write still fails alone, all
    or nothing."""
    db = world.services.db
    groups = _record_groups(monkeypatch)
    store = world.services.fhir_store
    real_commit = store.commit_creates
    poison = "Poisoned"

    def commit_creates(conn: Any, batch: Any) -> Any:
        if any(
            row["res_type"] == "Patient" and poison in str(p)
            for row, p in zip(batch.rows, batch.prepared, strict=True)
        ):
            raise Conflict("poisoned Bundle")
        return real_commit(conn, batch)

    monkeypatch.setattr(store, "commit_creates", commit_creates)
    bodies = {"a": _bundle(3), "b": _bundle(2), "poisoned": _bundle(2, family=poison)}
    results: dict[str, Any] = {}
    threads = _start(world, bodies, results)
    before = _stored_ids(world)
    with db.writer_lock():
        for thread in threads.values():
            thread.start()
        if db.is_sqlite:  # all three queued behind the first one's wait for the lock
            _wait(lambda: _group(world) is not None and len(_group(world)._queue) == 3)  # noqa: SLF001
    for thread in threads.values():
        thread.join(30)
    assert isinstance(results["poisoned"], Conflict)
    created = [e["response"]["location"].split("/")[1] for k in "ab" for e in results[k]["entry"]]
    assert len(created) == 5
    assert _stored_ids(world) - before == set(created)  # nothing of the poisoned Bundle
    # SQLite: one group of three (failed: each again alone); PostgreSQL: no group
    assert groups == ([3, 1, 1, 1] if db.is_sqlite else [])
    assert verify_chain(db).ok


def test_bundles_prepared_while_the_leader_waits_for_the_lock_join_its_group(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Bundle still being prepared when the first one's thread began to wait
    for the write lock joins that thread's group if it is queued before the
    lock comes (the group is taken under the lock, not before the wait)."""
    db = world.services.db
    groups = _record_groups(monkeypatch)
    store = world.services.fhir_store
    real_prepare = store.prepare_creates
    release, preparing = threading.Event(), threading.Event()

    def prepare_creates(principal: Any, items: Any, new_ids: bool = False) -> Any:
        if any(r["name"][0]["family"] == "Late" for r, _ in items):
            preparing.set()
            assert release.wait(30)
        return real_prepare(principal, items, new_ids)

    monkeypatch.setattr(store, "prepare_creates", prepare_creates)
    bodies = {"late": _bundle(3, family="Late"), "early": _bundle(2, family="Early")}
    results: dict[str, Any] = {}
    threads = _start(world, bodies, results)
    before = _stored_ids(world)
    with db.writer_lock():  # another writer holds the lock
        threads["late"].start()
        assert preparing.wait(30)
        threads["early"].start()
        if db.is_sqlite:  # "early" queued, its thread waits for the lock
            _wait(lambda: _group(world) is not None and len(_group(world)._queue) == 1)  # noqa: SLF001
            release.set()
            _wait(lambda: len(_group(world)._queue) == 2)  # noqa: SLF001 - "late" too
    release.set()
    for thread in threads.values():
        thread.join(30)
    created = [e["response"]["location"].split("/")[1] for k in bodies for e in results[k]["entry"]]
    assert len(created) == 5
    assert _stored_ids(world) - before == set(created)
    assert groups == ([2] if db.is_sqlite else [])
    assert verify_chain(db).ok


def test_a_lone_bundle_is_written_at_once(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Bundle alone is its own group: one transaction, nothing waited for."""
    groups = _record_groups(monkeypatch)
    result = _process(world, _bundle(4))
    assert [e["response"]["status"] for e in result["entry"]] == ["201 Created"] * 4
    if world.services.db.is_sqlite:
        assert groups == [1]
        assert (_group(world).transactions, _group(world).creates) == (1, 1)
    else:
        assert groups == [] and _group(world) is None
