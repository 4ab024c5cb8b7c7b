"""A transaction Bundle's inserts run as the write gate's holder on SQLite
(other threads' preparation waits at its checkpoints), never on PostgreSQL
(ADR 21, stop-15 amendment)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from salus.fhir.writegate import GATE
from tests.conftest import BACKENDS
from tests.integration.security_world import World, make_world


@pytest.fixture(params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    with make_world(request.param, tmp_path) as built:
        yield built


def _bundle(count: int) -> bytes:
    entries = [
        {
            "resource": {
                "resourceType": "Patient",
                "identifier": [{"system": "urn:hosp-a:mrn", "value": f"G-{uuid.uuid4().hex[:8]}"}],
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
