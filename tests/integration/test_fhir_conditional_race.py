"""Concurrent conditional creates (FHIR http.html#ccreate) with the same
If-None-Exist: exactly one resource is created, the others find it (200), on
SQLite and PostgreSQL (where a lock per condition orders the transactions)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from salus.db.tables import fhir_resources
from salus.fhir.rest import FhirRequest
from tests.conftest import BACKENDS
from tests.integration.security_world import World, make_world


@pytest.fixture(params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    with make_world(request.param, tmp_path) as built:
        yield built


def test_concurrent_conditional_creates_make_one_resource(world: World) -> None:
    services = world.services
    principal = services.tokens.verify(world.tokens["a-feed"])
    body = json.dumps(
        {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:hosp-a:mrn", "value": "RACE-1"}],
            "name": [{"family": "Phạm"}],
        }
    ).encode()
    statuses: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def create() -> None:
        request = FhirRequest(
            method="POST",
            path="Patient",
            query=[],
            headers={
                "content-type": "application/fhir+json",
                "if-none-exist": "identifier=urn:hosp-a:mrn|RACE-1",
            },
            body=body,
            principal=principal,
            purpose=None,
            base_url="http://test/fhir",
        )
        start.wait()
        try:
            statuses.append(services.fhir_router.handle(request).status)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert sorted(statuses) == [200] * 7 + [201]
    with services.db.read() as conn:
        count = conn.execute(
            select(func.count()).where(
                fhir_resources.c.res_type == "Patient", fhir_resources.c.deleted.is_(False)
            )
        ).scalar_one()
    assert count == 1
