"""The console's audit pages: trail search (each filter), "who looked at this
patient", chain verification; a hospital's security officer sees only its own
organization's events, clinicians and administrators none (SQLite and
PostgreSQL: the search's queries run on both)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import BACKENDS
from tests.integration.security_world import PASSWORD, World, make_world


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with make_world(
        request.param, tmp_path_factory.mktemp("audit"), rate_limit_login_per_minute=1000
    ) as built:
        yield built


def sign_in(world: World, username: str) -> None:
    world.client.cookies.clear()
    response = world.client.post(
        "/login", data={"username": username, "password": PASSWORD, "next": "/"}
    )
    assert response.status_code == 200, response.text


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF field on the page"
    return found.group(1)


def patient(world: World, who: str, family: str) -> str:
    created = world.call(
        who,
        "POST",
        "/fhir/Patient",
        json={"resourceType": "Patient", "name": [{"family": family}], "gender": "female"},
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


@pytest.fixture(scope="module")
def seeded(world: World) -> dict[str, Any]:
    a_patient = patient(world, "a-feed", "Audit-A")
    b_patient = patient(world, "b-feed", "Audit-B")
    assert world.call("a-doc", "GET", f"/fhir/Patient/{a_patient}").status_code == 200
    assert world.call("b-doc", "GET", f"/fhir/Patient/{b_patient}").status_code == 200
    sign_in(world, "a-doc")  # a refused attempt, whichever tests run
    assert world.client.get("/audit").status_code == 403
    world.client.cookies.clear()
    return {"a": a_patient, "b": b_patient}


def test_only_security_officers_open_the_audit_pages(world: World, seeded: dict[str, Any]) -> None:
    for who in ("a-doc", "a-admin", "a-steward"):
        sign_in(world, who)
        assert 'href="/audit"' not in world.client.get("/").text
        for path in ("/audit", f"/audit/patients/{seeded['a']}", "/audit/verify"):
            page = world.client.get(path)
            assert page.status_code == 403, (who, path)
            assert "text/html" in page.headers["content-type"]


def test_hospital_security_officer_searches_its_own_events(
    world: World, seeded: dict[str, Any]
) -> None:
    client = world.client
    sign_in(world, "a-sec")
    assert 'href="/audit"' in client.get("/").text
    page = client.get("/audit")
    assert page.status_code == 200
    assert f"Patient/{seeded['a']}" in page.text
    assert f"Patient/{seeded['b']}" not in page.text  # hosp-b's events are not hosp-a's
    by_who = client.get("/audit", params={"who": "a-doc"})
    assert f"/audit/patients/{seeded['a']}" in by_who.text and "a-doc" in by_who.text
    assert "a-feed" not in by_who.text.split("<tbody>")[1]
    by_patient = client.get("/audit", params={"patient": seeded["a"], "purpose": "TREAT"})
    assert "a-doc" in by_patient.text
    assert (
        "No audit events match."
        in client.get("/audit", params={"patient": seeded["a"], "purpose": "HRESCH"}).text
    )
    refused = client.get("/audit", params={"outcome": "4"})
    assert "refused: " in refused.text  # the clinician's attempt to open /audit
    assert "No audit events match." in client.get("/audit", params={"since": "2999-01-01"}).text
    assert client.get("/audit", params={"org": "hosp-b"}).status_code == 403
    assert client.get("/audit", params={"since": "last week"}).status_code == 400
    assert client.get("/audit", params={"category": "nonsense"}).status_code == 400
    first = client.get("/audit", params={"size": "2"})
    assert first.text.count("<tr>") == 3 and 'rel="next"' in first.text  # header + 2 rows


def test_network_security_officer_sees_every_hospital(world: World, seeded: dict[str, Any]) -> None:
    client = world.client
    sign_in(world, "ops-sec")
    page = client.get("/audit", params={"category": "rest"})
    assert f"Patient/{seeded['a']}" in page.text and f"Patient/{seeded['b']}" in page.text
    only_b = client.get("/audit", params={"org": "hosp-b", "category": "rest"})
    assert f"Patient/{seeded['b']}" in only_b.text and f"Patient/{seeded['a']}" not in only_b.text


def test_who_looked_at_this_patient(world: World, seeded: dict[str, Any]) -> None:
    client = world.client
    sign_in(world, "a-sec")
    form = client.get("/audit/patients")
    assert form.status_code == 200 and 'name="patient"' in form.text
    report = client.get("/audit/patients", params={"patient": seeded["a"]})
    assert report.status_code == 200
    table = report.text.split('data-testid="patient-access"')[1]
    assert "a-doc" in table and "treatment" in table
    sign_in(world, "b-sec")
    other = client.get(f"/audit/patients/{seeded['a']}")
    assert "Nobody has accessed this patient" in other.text  # hosp-b's accesses only
    # The report itself is audited, with the patient.
    sign_in(world, "ops-sec")
    trail = client.get("/audit", params={"patient": seeded["a"], "who": "b-sec"})
    assert "patient-access-report" in trail.text


def test_chain_verification_on_demand_with_csrf(world: World, seeded: dict[str, Any]) -> None:
    client = world.client
    sign_in(world, "ops-sec")
    page = client.get("/audit/verify")
    assert page.status_code == 200
    forged = client.post("/audit/verify", data={"csrf": "forged"})
    assert forged.status_code == 403
    done = client.post("/audit/verify", data={"csrf": csrf_of(page.text)})
    assert done.status_code == 200 and "Audit chain intact" in done.text
    assert "Audit chain intact" in client.get("/audit").text
