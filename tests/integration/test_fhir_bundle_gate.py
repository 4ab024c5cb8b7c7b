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


def test_bundles_ready_while_the_lock_is_held_share_one_transaction(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three Bundles: the first waits for the write lock (held here), the
    other two queue behind it and are then written together; each Bundle's
    own poisoned write still fails alone, all or nothing."""
    db = world.services.db
    groups: list[int] = []
    real_merge = bundle_module.merge_prepared

    def merge(batches: Any) -> Any:
        groups.append(len(batches))
        return real_merge(batches)

    monkeypatch.setattr(bundle_module, "merge_prepared", merge)
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
    bodies = [_bundle(3), _bundle(2), _bundle(2, family=poison)]
    results: dict[int, Any] = {}

    def post(k: int) -> None:
        try:
            results[k] = _process(world, bodies[k])
        except Exception as exc:  # noqa: BLE001 - the test checks which one failed
            results[k] = exc

    before = _stored_ids(world)
    threads = [threading.Thread(target=post, args=(k,), daemon=True) for k in range(3)]
    with db.writer_lock():
        threads[0].start()
        if db.is_sqlite:
            _wait(lambda: groups == [1])  # the first took its group and waits for the lock
            group = store.bundle_group
            threads[1].start()
            threads[2].start()
            _wait(lambda: len(group._queue) == 2)  # noqa: SLF001 - both queued behind it
        else:  # PostgreSQL: no group, no writer lock; each Bundle its own transaction
            threads[1].start()
            threads[2].start()
    for thread in threads:
        thread.join(30)
    assert isinstance(results[2], Conflict)
    created = [e["response"]["location"].split("/")[1] for k in (0, 1) for e in results[k]["entry"]]
    assert len(created) == 5
    assert _stored_ids(world) - before == set(created)  # nothing of the poisoned Bundle
    if db.is_sqlite:
        # one group for the first, one for the two others (failed: each again alone)
        assert groups[:2] == [1, 2]
        assert sorted(groups[2:]) == [1, 1]
    else:
        assert groups == []
    assert verify_chain(db).ok
