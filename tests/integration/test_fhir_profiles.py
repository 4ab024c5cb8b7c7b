"""Profiles stored on the server, through the HTTP API on SQLite and PostgreSQL:
``$validate`` with ``profile`` (query and Parameters, ``url|version``), a
ValueSet stored on the server for a required binding, ``meta.profile``
enforced on create, update, transaction Bundles and bulk import
(``SALUS_FHIR_ENFORCE_PROFILES``), which StructureDefinition wins when several
share a URL, and new versions taking effect."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from salus.jobs import Worker
from tests.conftest import BACKENDS
from tests.integration.security_world import SYSTEM, World, make_world

FHIR = "application/fhir+json"
DATA = Path(__file__).parent.parent / "data" / "fhir" / "profiles"
CCCD = "https://salus.example/sid/vn-cccd"


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("profiles")
    with make_world(request.param, folder, fhir_enforce_profiles=True) as built:
        yield built


def fhir(world: World, who: str, method: str, path: str, body: Any = None, **headers: str) -> Any:
    sent = {**world.headers(who), **headers}
    content = None
    if body is not None:
        content = json.dumps(body).encode()
        sent["Content-Type"] = FHIR
    return world.client.request(method, f"/fhir/{path}", content=content, headers=sent)


def definition(name: str, url: str | None = None) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DATA / name).read_text(encoding="utf-8"))
    loaded.pop("id", None)
    if url:
        loaded["url"] = url
    return loaded


def stored_profile(world: World, who: str = "a-feed", name: str = "vn-patient.json") -> str:
    """Store a copy of a test profile under a fresh canonical URL; return the URL."""
    url = f"https://salus.example/fhir/StructureDefinition/{uuid.uuid4().hex[:12]}"
    created = fhir(world, who, "POST", "StructureDefinition", definition(name, url))
    assert created.status_code == 201, created.text
    return url


def patient(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": CCCD, "value": "001084012345"}],
        "name": [{"family": "Trần", "given": ["Văn", "Bình"]}],
        "gender": "male",
        "birthDate": "1979-12-01",
        "telecom": [{"system": "phone", "value": "0911111111"}],
    }
    body.update(extra)
    return body


def validate(world: World, res_type: str, body: Any, profile: str | None = None) -> Any:
    path = f"{res_type}/$validate"
    response = world.client.post(
        f"/fhir/{path}",
        params={"profile": profile} if profile else None,
        content=json.dumps(body).encode(),
        headers={**world.headers("a-feed"), "Content-Type": FHIR},
    )
    assert response.status_code == 200, response.text
    issues: list[dict[str, Any]] = response.json()["issue"]
    return issues


def errors(issues: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {
        (issue["code"], issue.get("expression", [""])[0])
        for issue in issues
        if issue["severity"] == "error"
    }


# -- $validate ---------------------------------------------------------------------------------
def test_validate_with_a_stored_profile(world: World) -> None:
    url = stored_profile(world)
    ok = validate(world, "Patient", patient(), url)
    assert errors(ok) == set() and ok[0]["diagnostics"] == "All OK"
    bad = patient(birthDate=None, identifier=[{"system": CCCD, "value": "123"}], photo=[{}])
    del bad["birthDate"]
    bad["photo"] = [{"contentType": "image/jpeg"}]
    found = errors(validate(world, "Patient", bad, url))
    assert ("required", "Patient.birthDate") in found
    assert ("invariant", "Patient.identifier[0]") in found
    assert ("structure", "Patient.photo") in found
    # As a Parameters resource, and without the profile: the base R4 rules only.
    wrapped = {
        "resourceType": "Parameters",
        "parameter": [{"name": "resource", "resource": bad}, {"name": "profile", "valueUri": url}],
    }
    assert ("required", "Patient.birthDate") in errors(validate(world, "Patient", wrapped))
    assert errors(validate(world, "Patient", bad)) == set()
    # meta.profile names it: checked without the parameter.
    declared = {**bad, "meta": {"profile": [url]}}
    assert ("structure", "Patient.photo") in errors(validate(world, "Patient", declared))
    unknown = validate(world, "Patient", patient(), url + "-nope")
    assert errors(unknown) == {("not-found", "profile")}
    base = validate(world, "Patient", patient(), "http://hl7.org/fhir/StructureDefinition/Patient")
    assert errors(base) == set()


def test_snapshot_profile_with_a_value_set_stored_on_the_server(world: World) -> None:
    value_set = definition("vn-obs-status.json")
    assert fhir(world, "a-feed", "POST", "ValueSet", value_set).status_code == 201
    url = stored_profile(world, name="vn-heart-rate.json")
    observation = {
        "resourceType": "Observation",
        "status": "preliminary",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-11-20T08:30:00+07:00",
        "valueQuantity": {"value": 80, "system": "http://unitsofmeasure.org", "code": "/min"},
    }
    assert errors(validate(world, "Observation", observation, url)) == {
        ("code-invalid", "Observation.status")
    }
    observation["status"] = "final"
    assert errors(validate(world, "Observation", observation, f"{url}|1.0.0")) == set()
    assert errors(validate(world, "Observation", observation, f"{url}|9.9")) == {
        ("not-found", "profile")
    }


# -- meta.profile on writes ------------------------------------------------------------------
def test_meta_profile_is_enforced_on_create_and_update(world: World) -> None:
    url = stored_profile(world)
    bad = patient(meta={"profile": [url]}, gender="unknown")
    refused = fhir(world, "a-feed", "POST", "Patient", bad)
    assert refused.status_code == 422, refused.text
    outcome = refused.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert {"Patient.gender"} == {e for i in outcome["issue"] for e in i["expression"]}
    good = fhir(world, "a-feed", "POST", "Patient", patient(meta={"profile": [url]}))
    assert good.status_code == 201, good.text
    stored = good.json()
    stored["photo"] = [{"contentType": "image/png"}]
    again = fhir(world, "a-feed", "PUT", f"Patient/{stored['id']}", stored)
    assert again.status_code == 422
    kept = fhir(world, "a-feed", "GET", f"Patient/{stored['id']}").json()
    assert kept["meta"]["versionId"] == "1" and "photo" not in kept
    # A profile the server does not know is not enforced.
    unknown = patient(meta={"profile": ["https://elsewhere.example/StructureDefinition/x"]})
    assert fhir(world, "a-feed", "POST", "Patient", unknown).status_code == 201


def test_a_transaction_with_a_violation_leaves_nothing(world: World) -> None:
    url = stored_profile(world)
    family = f"Tx{uuid.uuid4().hex[:8]}"
    good = patient(name=[{"family": family}], meta={"profile": [url]})
    bad = patient(name=[{"family": family}], meta={"profile": [url]})
    del bad["birthDate"]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": good, "request": {"method": "POST", "url": "Patient"}},
            {"resource": bad, "request": {"method": "POST", "url": "Patient"}},
        ],
    }
    response = fhir(world, "a-feed", "POST", "", bundle)
    assert response.status_code in (400, 422), response.text
    found = fhir(world, "a-feed", "GET", f"Patient?family={family}").json()
    assert found["total"] == 0


def test_bulk_import_rejects_lines_that_break_their_profile(world: World) -> None:
    url = stored_profile(world)
    good, bad = patient(meta={"profile": [url]}), patient(meta={"profile": [url]})
    bad["identifier"] = [{"system": "urn:oid:1.2.3", "value": "x"}]
    body = "".join(json.dumps(r) + "\n" for r in (good, bad)).encode()
    headers = {
        **world.headers("a-feed"),
        "Prefer": "respond-async",
        "Content-Type": "application/fhir+ndjson",
    }
    started = world.client.post("/fhir/$import", content=body, headers=headers)
    assert started.status_code == 202, started.text
    Worker(world.services.jobs, world.services.job_handlers).drain()
    location = started.headers["content-location"].split("/fhir/", 1)[1]
    result = fhir(world, "a-feed", "GET", location).json()
    assert result["output"][0]["created"] == 1
    [rejected] = result["rejected"]
    assert rejected["line"] == 2 and rejected["expression"] == "Patient.identifier"


# -- which profile, which version -------------------------------------------------------------
def test_the_first_or_the_operators_profile_wins(world: World) -> None:
    url = stored_profile(world, "a-feed")
    stricter = definition("vn-patient.json", url)
    stricter["differential"]["element"].append(
        {"id": "Patient.deceased[x]", "path": "Patient.deceased[x]", "min": 1}
    )
    # Another hospital stores a StructureDefinition under the same URL: ignored.
    assert fhir(world, "b-feed", "POST", "StructureDefinition", stricter).status_code == 201
    assert errors(validate(world, "Patient", patient(), url)) == set()
    # The network operator's definition comes first.
    with world.services.db.write() as conn:
        world.services.fhir_store.create(conn, SYSTEM, stricter)
    assert ("required", "Patient.deceased") in errors(validate(world, "Patient", patient(), url))


def test_a_new_version_of_a_profile_takes_effect(world: World) -> None:
    url = stored_profile(world)
    assert errors(validate(world, "Patient", patient(), url)) == set()
    found = fhir(world, "a-feed", "GET", f"StructureDefinition?url={url}").json()
    current = found["entry"][0]["resource"]
    current["differential"]["element"].append(
        {"id": "Patient.active", "path": "Patient.active", "min": 1}
    )
    updated = fhir(world, "a-feed", "PUT", f"StructureDefinition/{current['id']}", current)
    assert updated.status_code == 200, updated.text
    assert ("required", "Patient.active") in errors(validate(world, "Patient", patient(), url))
    deleted = fhir(world, "a-feed", "DELETE", f"StructureDefinition/{current['id']}")
    assert deleted.status_code == 204
    assert errors(validate(world, "Patient", patient(), url)) == {("not-found", "profile")}
