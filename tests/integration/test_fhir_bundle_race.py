"""Transaction Bundles whose conditions race other writers (FHIR R4
http.html#transaction, ``ifNoneExist`` and conditional references) on SQLite
and PostgreSQL.

On SQLite the creates of such a Bundle are prepared on a read snapshot before
the write lock, and every condition is matched again under the lock
(``BundleProcessor._checked_creates_transaction``); these tests commit a
competing write between the two and check that the Bundle then behaves as if
it had run entirely after that write, and leaves nothing behind when it fails.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from salus.db.tables import fhir_resources
from salus.fhir.prepare import PreparedCreates
from salus.fhir.rest import FhirRequest
from tests.conftest import BACKENDS
from tests.integration.security_world import World, make_world

MRN = "urn:hosp-a:mrn"


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with make_world(request.param, tmp_path_factory.mktemp("race")) as built:
        yield built


def request(world: World, method: str, path: str, body: Any, **headers: str) -> FhirRequest:
    return FhirRequest(
        method=method,
        path=path,
        query=[],
        headers={"content-type": "application/fhir+json", **headers},
        body=json.dumps(body).encode(),
        principal=world.services.tokens.verify(world.tokens["a-feed"]),
        purpose=None,
        base_url="http://test/fhir",
    )


def patient(mrn: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": MRN, "value": mrn}],
        "name": [{"family": "Đặng"}],
    }


def observation(subject: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "subject": {"reference": subject},
    }


def conditional_bundle(mrn: str) -> dict[str, Any]:
    """A Patient created unless it exists (ifNoneExist), and an Observation of it."""
    full_url = f"urn:uuid:{uuid.uuid4()}"
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": full_url,
                "resource": patient(mrn),
                "request": {
                    "method": "POST",
                    "url": "Patient",
                    "ifNoneExist": f"identifier={MRN}|{mrn}",
                },
            },
            {
                "resource": observation(full_url),
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }


def stored(world: World, res_type: str) -> list[dict[str, Any]]:
    store = world.services.fhir_store
    with world.services.db.read() as conn:
        rows = conn.execute(
            select(fhir_resources).where(
                fhir_resources.c.res_type == res_type, fhir_resources.c.deleted.is_(False)
            )
        ).mappings()
        return [store.stored_from_row(row).resource or {} for row in rows]


def with_mrn(world: World, mrn: str) -> list[str]:
    return [
        p["id"]
        for p in stored(world, "Patient")
        if any(i.get("value") == mrn for i in p.get("identifier", []))
    ]


def about(world: World, patient_id: str) -> int:
    return sum(
        1
        for o in stored(world, "Observation")
        if o["subject"]["reference"] == f"Patient/{patient_id}"
    )


def race_before_lock(
    world: World, monkeypatch: pytest.MonkeyPatch, competing: list[FhirRequest]
) -> list[int]:
    """Run ``competing`` requests (each committed) once the next Bundle's creates
    are prepared, before its write transaction; returns their statuses."""
    store = world.services.fhir_store
    encode = store.encode
    statuses: list[int] = []
    fired: list[bool] = []

    def encode_then_race(batch: PreparedCreates, dialect: Any) -> PreparedCreates:
        result = encode(batch, dialect)
        if not fired:  # only the Bundle's own preparation, once
            fired.append(True)
            statuses.extend(world.services.fhir_router.handle(r).status for r in competing)
        return result

    monkeypatch.setattr(store, "encode", encode_then_race)
    return statuses


def test_if_none_exist_raced_by_a_create_after_preparation(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not world.services.db.is_sqlite:
        pytest.skip(
            "PostgreSQL matches conditions inside its transaction under a per-condition "
            "lock (no preparation before it); the threaded test below covers it"
        )
    mrn = f"RACE-{uuid.uuid4().hex[:8]}"
    raced = race_before_lock(world, monkeypatch, [request(world, "POST", "Patient", patient(mrn))])
    response = world.services.fhir_router.handle(
        request(world, "POST", "", conditional_bundle(mrn))
    )
    assert raced == [201]
    assert response.status == 200
    assert response.resource is not None
    first, second = (e["response"] for e in response.resource["entry"])
    # The Patient created in between is found under the lock: no second Patient,
    # and the Observation refers to the one that exists.
    [existing] = with_mrn(world, mrn)
    assert first == {"status": "200 OK", "location": f"Patient/{existing}"}
    assert second["status"] == "201 Created"
    assert about(world, existing) == 1


def test_conditional_reference_made_ambiguous_in_between_fails_whole(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not world.services.db.is_sqlite:
        pytest.skip("the preparation before the write lock is SQLite's (see the test above)")
    mrn = f"AMB-{uuid.uuid4().hex[:8]}"
    assert (
        world.services.fhir_router.handle(request(world, "POST", "Patient", patient(mrn))).status
        == 201
    )
    observations = len(stored(world, "Observation"))
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": observation(f"Patient?identifier={MRN}|{mrn}"),
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": patient(f"{mrn}-other"),
                "request": {"method": "POST", "url": "Patient"},
            },
        ],
    }
    # A second Patient with the same identifier, committed after the Bundle's
    # reference was resolved on its snapshot: under the lock it matches two.
    raced = race_before_lock(world, monkeypatch, [request(world, "POST", "Patient", patient(mrn))])
    with pytest.raises(Exception) as failed:
        world.services.fhir_router.handle(request(world, "POST", "", bundle))
    assert raced == [201]
    assert getattr(failed.value, "http_status", None) == 412
    assert len(with_mrn(world, mrn)) == 2
    assert with_mrn(world, f"{mrn}-other") == []  # nothing of the Bundle is left
    assert len(stored(world, "Observation")) == observations


def test_unchanged_conditions_write_what_was_prepared(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write in between that touches no condition: the prepared rows are written
    (the Patient found before the lock stays the match)."""
    mrn = f"KEEP-{uuid.uuid4().hex[:8]}"
    [existing] = [
        world.services.fhir_router.handle(request(world, "POST", "Patient", patient(mrn)))
        .headers["Location"]
        .split("/")[-3]
    ]
    raced = race_before_lock(
        world, monkeypatch, [request(world, "POST", "Patient", patient(f"{mrn}-x"))]
    )
    response = world.services.fhir_router.handle(
        request(world, "POST", "", conditional_bundle(mrn))
    )
    assert response.status == 200
    assert response.resource is not None
    assert response.resource["entry"][0]["response"]["location"] == f"Patient/{existing}"
    assert with_mrn(world, mrn) == [existing]
    assert about(world, existing) == 1
    if world.services.db.is_sqlite:
        assert raced == [201]


def test_concurrent_conditional_transactions_make_one_patient(world: World) -> None:
    mrn = f"CONC-{uuid.uuid4().hex[:8]}"
    threads_n = 6
    statuses: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(threads_n)

    def run() -> None:
        req = request(world, "POST", "", conditional_bundle(mrn))
        start.wait()
        try:
            response = world.services.fhir_router.handle(req)
            assert response.resource is not None
            statuses.append(response.resource["entry"][0]["response"]["status"])
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert sorted(statuses) == ["200 OK"] * (threads_n - 1) + ["201 Created"]
    [only] = with_mrn(world, mrn)
    assert about(world, only) == threads_n
