"""Batch and transaction Bundles (http.html#transaction) on SQLite and
PostgreSQL: atomicity, urn:uuid and conditional references, ifNoneExist,
ifMatch, entry order, and conditional matching that never crosses hospitals."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from salus.db.tables import fhir_resources
from tests.conftest import BACKENDS
from tests.integration.security_world import World, make_world

FHIR = "application/fhir+json"


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with make_world(request.param, tmp_path_factory.mktemp("bundle")) as built:
        yield built


def post_bundle(world: World, who: str, bundle: dict[str, Any], status: int = 200) -> Any:
    response = world.client.post(
        "/fhir",
        content=json.dumps(bundle).encode(),
        headers={**world.headers(who), "Content-Type": FHIR},
    )
    assert response.status_code == status, response.text
    return response.json()


def patient_entry(mrn: str, system: str = "urn:hosp-a:mrn", **extra: Any) -> dict[str, Any]:
    full_url = f"urn:uuid:{uuid.uuid4()}"
    return {
        "fullUrl": full_url,
        "resource": {
            "resourceType": "Patient",
            "identifier": [{"system": system, "value": mrn}],
            "name": [{"family": "Lê", "given": ["Minh"]}],
            **extra,
        },
        "request": {"method": "POST", "url": "Patient"},
    }


def obs_entry(subject: str, code: str = "2345-7") -> dict[str, Any]:
    return {
        "resource": {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": subject},
            "valueQuantity": {"value": 5.1},
        },
        "request": {"method": "POST", "url": "Observation"},
    }


def count(world: World) -> int:
    with world.services.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(fhir_resources)).scalar_one())


def test_transaction_resolves_urn_uuid_references(world: World) -> None:
    patient = patient_entry(f"MRN-{uuid.uuid4().hex[:6]}")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [obs_entry(patient["fullUrl"]), patient],
    }
    result = post_bundle(world, "a-feed", bundle)
    assert result["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert statuses == ["201 Created", "201 Created"]
    obs_location = result["entry"][0]["response"]["location"]
    patient_location = result["entry"][1]["response"]["location"]
    obs = world.client.get(
        f"/fhir/{obs_location.split('/_history')[0]}", headers=world.headers("a-feed")
    ).json()
    assert obs["subject"]["reference"] == patient_location.split("/_history")[0]


def test_failed_transaction_leaves_nothing(world: World) -> None:
    before = count(world)
    bad = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            patient_entry("MRN-ROLLBACK"),
            obs_entry("urn:uuid:not-in-this-bundle"),
        ],
    }
    outcome = post_bundle(world, "a-feed", bad, status=422)
    assert outcome["resourceType"] == "OperationOutcome"
    assert "Bundle.entry[1]" in outcome["issue"][0]["diagnostics"]
    invalid = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            patient_entry("MRN-ROLLBACK-2"),
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "bogus",
                    "code": {"text": "x"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    post_bundle(world, "a-feed", invalid, status=400)
    assert count(world) == before


def test_if_none_exist_and_conditional_references(world: World) -> None:
    mrn = f"MRN-{uuid.uuid4().hex[:6]}"
    first = patient_entry(mrn)
    first["request"]["ifNoneExist"] = f"identifier=urn:hosp-a:mrn|{mrn}"
    created = post_bundle(
        world, "a-feed", {"resourceType": "Bundle", "type": "transaction", "entry": [first]}
    )
    assert created["entry"][0]["response"]["status"] == "201 Created"
    again = patient_entry(mrn)
    again["request"]["ifNoneExist"] = f"identifier=urn:hosp-a:mrn|{mrn}"
    matched = post_bundle(
        world,
        "a-feed",
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [again, obs_entry(again["fullUrl"])],
        },
    )
    assert matched["entry"][0]["response"]["status"] == "200 OK"
    conditional = post_bundle(
        world,
        "a-feed",
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [obs_entry(f"Patient?identifier=urn:hosp-a:mrn|{mrn}")],
        },
    )
    assert conditional["entry"][0]["response"]["status"] == "201 Created"
    patient_id = created["entry"][0]["response"]["location"].split("/")[1]
    observations = world.client.get(
        f"/fhir/Observation?subject=Patient/{patient_id}", headers=world.headers("a-feed")
    ).json()
    assert observations["total"] == 2


def test_conditional_matching_never_crosses_hospitals(world: World) -> None:
    mrn = f"MRN-{uuid.uuid4().hex[:6]}"
    post_bundle(
        world,
        "b-feed",
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [patient_entry(mrn, "urn:shared:national-id")],
        },
    )
    # Hospital A's conditional create does not see B's patient: it creates its own.
    entry = patient_entry(mrn, "urn:shared:national-id")
    entry["request"]["ifNoneExist"] = f"identifier=urn:shared:national-id|{mrn}"
    result = post_bundle(
        world, "a-feed", {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
    )
    assert result["entry"][0]["response"]["status"] == "201 Created"
    # A conditional reference to B's patient alone resolves to nothing visible... A's own one.
    only_b = f"urn:only-b:{uuid.uuid4().hex[:6]}"
    post_bundle(
        world,
        "b-feed",
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [patient_entry(only_b, "urn:only-b")],
        },
    )
    refused = post_bundle(
        world,
        "a-feed",
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [obs_entry(f"Patient?identifier=urn:only-b|{only_b}")],
        },
        status=412,
    )
    assert "matches 0 resources" in refused["issue"][0]["diagnostics"]


def test_if_match_and_order(world: World) -> None:
    created = post_bundle(
        world,
        "a-feed",
        {"resourceType": "Bundle", "type": "transaction", "entry": [patient_entry("MRN-IFMATCH")]},
    )
    location = created["entry"][0]["response"]["location"]
    patient_id = location.split("/")[1]
    resource = world.client.get(
        f"/fhir/Patient/{patient_id}", headers=world.headers("a-feed")
    ).json()
    stale = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {**resource, "gender": "male"},
                "request": {"method": "PUT", "url": f"Patient/{patient_id}", "ifMatch": 'W/"9"'},
            }
        ],
    }
    post_bundle(world, "a-feed", stale, status=412)
    ordered = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{patient_id}"}},
            {
                "resource": {**resource, "gender": "female"},
                "request": {"method": "PUT", "url": f"Patient/{patient_id}", "ifMatch": 'W/"1"'},
            },
        ],
    }
    result = post_bundle(world, "a-feed", ordered)
    # GET runs after PUT (http.html#trules): it sees the new version.
    assert result["entry"][0]["resource"]["gender"] == "female"
    assert result["entry"][1]["response"]["status"] == "200 OK"


def test_batch_reports_each_entry(world: World) -> None:
    result = post_bundle(
        world,
        "a-feed",
        {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                patient_entry("MRN-BATCH-1"),
                {
                    "resource": {"resourceType": "Patient", "gender": "nonsense"},
                    "request": {"method": "POST", "url": "Patient"},
                },
                {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
            ],
        },
    )
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert statuses[0] == "201 Created" and statuses[1] == "400" and statuses[2] == "404"
    assert result["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"


def test_bundle_shape_errors(world: World) -> None:
    post_bundle(world, "a-feed", {"resourceType": "Bundle", "type": "collection"}, status=400)
    post_bundle(
        world,
        "a-feed",
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"resource": {"resourceType": "Patient"}}],
        },
        status=400,
    )
    refused = world.client.post(
        "/fhir",
        content=json.dumps(
            {"resourceType": "Bundle", "type": "transaction", "entry": [patient_entry("X-1")]}
        ).encode(),
        headers={**world.headers("moh-analyst"), "Content-Type": FHIR},
    )
    assert refused.status_code == 403


def test_conditional_update_and_source_never_cross_hospitals(world: World) -> None:
    mrn = f"MRN-{uuid.uuid4().hex[:6]}"
    source = f"urn:hosp-b:feed:{uuid.uuid4().hex[:6]}"
    entry = patient_entry(mrn, "urn:shared:id", meta={"source": source})
    post_bundle(
        world, "b-feed", {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
    )
    # _source finds hospital B's resource for B only
    found_b = world.client.get(
        f"/fhir/Patient?_source={source}", headers=world.headers("b-feed")
    ).json()
    found_a = world.client.get(
        f"/fhir/Patient?_source={source}", headers=world.headers("a-feed")
    ).json()
    assert found_b["total"] == 1 and found_a["total"] == 0
    # A conditional update by hospital A matches nothing of B's: it creates A's own.
    update = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    "resourceType": "Patient",
                    "gender": "female",
                    "identifier": [{"system": "urn:shared:id", "value": mrn}],
                },
                "request": {"method": "PUT", "url": f"Patient?identifier=urn:shared:id|{mrn}"},
            }
        ],
    }
    result = post_bundle(world, "a-feed", update)
    assert result["entry"][0]["response"]["status"] == "201 Created"
    b_view = world.client.get(
        f"/fhir/Patient?identifier=urn:shared:id|{mrn}", headers=world.headers("b-feed")
    ).json()
    assert b_view["total"] == 1 and "gender" not in b_view["entry"][0]["resource"]
