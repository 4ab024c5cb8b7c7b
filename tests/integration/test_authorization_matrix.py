"""The authorization matrix: principals of every role in five tenants against
every HTTP endpoint that exists, on SQLite and PostgreSQL. Zero leaks, and
every refusal is in the audit trail.

Later issues (FHIR, DICOMweb, DIMSE, MLLP, export) add their endpoints and
leak patterns to this matrix.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from salus.db.tables import audit_events
from tests.conftest import BACKENDS
from tests.integration.security_world import CLIENTS, USERS, World, make_world

EVERYONE = [*USERS, *CLIENTS]


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with make_world(request.param, tmp_path_factory.mktemp("world")) as built:
        # Some audit history and a break-the-glass grant in each hospital.
        for doc in ("a-doc", "b-doc"):
            assert (
                built.call(
                    doc,
                    "POST",
                    "/api/v1/break-glass",
                    json={"patient": "P-1", "reason": "unconscious in emergency"},
                ).status_code
                == 201
            )
        yield built


def _cases(world: World) -> list[tuple[str, str, str, Any, set[str]]]:
    """(method, path, body, allowed principals) for every protected endpoint."""
    b_doc = world.user_ids["b-doc"]
    a_doc2 = world.user_ids["a-doc2"]
    fresh = uuid.uuid4().hex[:8]
    return [
        ("GET", "/api/v1/admin/organizations", None, {"ops-admin", "a-admin", "b-admin"}),
        (
            "POST",
            "/api/v1/admin/organizations",
            {"id": f"new-{fresh}", "name": "New", "kind": "hospital"},
            {"ops-admin"},
        ),
        ("GET", "/api/v1/admin/users", None, {"ops-admin", "a-admin", "b-admin"}),
        ("PUT", f"/api/v1/admin/users/{b_doc}/active", {"active": True}, {"ops-admin", "b-admin"}),
        ("PUT", f"/api/v1/admin/users/{a_doc2}/active", {"active": True}, {"ops-admin", "a-admin"}),
        ("POST", f"/api/v1/admin/users/{b_doc}/unlock", None, {"ops-admin", "b-admin"}),
        ("GET", "/api/v1/admin/clients", None, {"ops-admin", "a-admin", "b-admin"}),
        (
            "POST",
            "/api/v1/admin/grants",
            {"principal_kind": "user", "principal_id": b_doc, "role": "clinician"},
            {"ops-admin", "b-admin"},
        ),
        ("POST", "/api/v1/admin/signing-keys/rotate", None, {"ops-admin"}),
        ("GET", "/api/v1/audit/events", None, {"ops-sec", "a-sec", "b-sec"}),
        ("GET", "/api/v1/audit/patient-access?patient=P-1", None, {"ops-sec", "a-sec", "b-sec"}),
        ("GET", "/api/v1/break-glass/reviews", None, {"ops-sec", "a-sec", "b-sec"}),
        (
            "POST",
            "/api/v1/break-glass",
            {"patient": "P-9", "reason": "cardiac arrest on ward"},
            {"a-doc", "a-doc2", "b-doc"},
        ),
        (
            "POST",
            "/api/v1/care/treatment-relationships",
            {"patient": "P-7", "source": "Encounter/e1"},
            {"a-doc", "a-doc2", "b-doc", "a-feed", "b-feed"},
        ),
        (
            "POST",
            "/api/v1/care/consents",
            {"patient": "P-7", "decision": "permit", "source": "Consent/c1"},
            {"a-doc", "a-doc2", "b-doc", "a-feed", "b-feed"},
        ),
        (
            "GET",
            "/api/v1/patients/P-1/access",
            None,
            {"a-doc", "a-doc2", "b-doc", "a-feed", "b-feed"},
        ),
    ]


def test_matrix(world: World) -> None:
    refused: list[str] = []
    granted: list[str] = []
    problems: list[str] = []
    for method, path, body, allowed in _cases(world):
        for who in [None, *EVERYONE]:
            request_id = uuid.uuid4().hex
            response = world.call(
                who,
                method,
                path.replace("new-", f"new-{who}-")
                if method == "POST" and "organizations" in path
                else path,
                json=_unique(body, who),
                request_id=request_id,
            )
            expected_ok = who in allowed
            if expected_ok:
                granted.append(request_id)
            if expected_ok and response.status_code >= 400:
                problems.append(f"{who} {method} {path}: {response.status_code} {response.text}")
            if not expected_ok:
                wanted = 401 if who is None else 403
                if response.status_code != wanted:
                    problems.append(f"LEAK? {who} {method} {path}: {response.status_code}")
                refused.append(request_id)
    assert not problems, "\n".join(problems)
    with world.services.db.read() as conn:
        audited = set(
            conn.execute(
                select(audit_events.c.request_id).where(audit_events.c.outcome == 4)
            ).scalars()
        )
    missing = [rid for rid in refused if rid not in audited]
    assert not missing, f"{len(missing)} of {len(refused)} refusals were not audited"
    with world.services.db.read() as conn:
        accesses = set(
            conn.execute(
                select(audit_events.c.request_id).where(audit_events.c.outcome == 0)
            ).scalars()
        )
    unaudited = [rid for rid in granted if rid not in accesses]
    assert not unaudited, f"{len(unaudited)} of {len(granted)} granted requests not audited"


def _unique(body: Any, who: str | None) -> Any:
    if isinstance(body, dict) and "id" in body and "kind" in body:
        return {**body, "id": f"{body['id']}-{who or 'anon'}"[:60]}
    return body


def test_hospital_admins_see_only_their_own(world: World) -> None:
    users = world.call("a-admin", "GET", "/api/v1/admin/users").json()
    assert users and {u["org_id"] for u in users} == {"hosp-a"}
    clients = world.call("a-admin", "GET", "/api/v1/admin/clients").json()
    assert {c["org_id"] for c in clients} == {"hosp-a"}
    everyone = world.call("ops-admin", "GET", "/api/v1/admin/users").json()
    assert {u["org_id"] for u in everyone} >= {"hosp-a", "hosp-b", "moh", "uni", "ops"}
    assert all("password_hash" not in u and "totp_secret" not in u for u in everyone)


def test_hospital_admin_cannot_create_users_elsewhere_or_escalate(world: World) -> None:
    elsewhere = world.call(
        "a-admin",
        "POST",
        "/api/v1/admin/users",
        json={
            "username": "intruder",
            "org_id": "hosp-b",
            "password": "long enough password 1",
            "roles": ["clinician"],
        },
    )
    assert elsewhere.status_code == 403
    network_admin = world.call(
        "a-admin",
        "POST",
        "/api/v1/admin/grants",
        json={
            "principal_kind": "user",
            "principal_id": world.user_ids["ops-sec"],
            "role": "administrator",
        },
    )
    assert network_admin.status_code == 403
    own = world.call(
        "a-admin",
        "POST",
        "/api/v1/admin/users",
        json={
            "username": f"a-nurse-{uuid.uuid4().hex[:6]}",
            "org_id": "hosp-a",
            "password": "long enough password 1",
            "roles": ["clinician"],
        },
    )
    assert own.status_code == 201


def test_security_officers_see_their_own_organization(world: World) -> None:
    local = world.call("a-sec", "GET", "/api/v1/audit/events", params={"count": 500}).json()
    orgs = {
        a["who"]["identifier"]["value"]
        for e in local["entry"]
        for a in e["resource"]["agent"]
        if a.get("who", {}).get("identifier", {}).get("system") == "urn:salus:org"
    }
    assert orgs == {"hosp-a"}, orgs
    network = world.call("ops-sec", "GET", "/api/v1/audit/events", params={"count": 500}).json()
    assert len(network["entry"]) >= len(local["entry"])
    queue = world.call("a-sec", "GET", "/api/v1/break-glass/reviews").json()
    assert queue and {g["org_id"] for g in queue} == {"hosp-a"}
    report = world.call(
        "b-sec", "GET", "/api/v1/audit/patient-access", params={"patient": "P-1"}
    ).json()
    assert report["accesses"] and all(a["org_id"] == "hosp-b" for a in report["accesses"])


def test_unauthenticated_and_bad_tokens(world: World) -> None:
    for header in ["Bearer", "Bearer not.a.token", "Basic abc", "Bearer " + "x" * 50]:
        response = world.client.get("/api/v1/admin/users", headers={"Authorization": header})
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["resourceType"] == "OperationOutcome"


def test_purpose_of_use_header(world: World) -> None:
    bad = world.client.get(
        "/api/v1/patients/P-1/access",
        headers=world.headers("a-doc", **{"X-Salus-Purpose-Of-Use": "SHOPPING"}),
    )
    assert bad.status_code == 400
    wrong = world.client.get(
        "/api/v1/patients/P-1/access",
        headers=world.headers("a-doc", **{"X-Salus-Purpose-Of-Use": "HRESCH"}),
    )
    assert wrong.status_code == 403
    emergency = world.client.get(
        "/api/v1/patients/P-1/access",
        headers=world.headers("a-doc", **{"X-Salus-Purpose-Of-Use": "ETREAT"}),
    )
    assert emergency.status_code == 400


def test_security_headers(world: World) -> None:
    response = world.call("a-doc", "GET", "/api/v1/patients/P-1/access")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


def test_fhir_matrix(world: World) -> None:
    """Every principal against the FHIR interactions on a hospital A patient."""
    import json

    created = world.client.post(
        "/fhir/Patient",
        content=json.dumps({"resourceType": "Patient", "name": [{"family": "Phạm"}]}).encode(),
        headers={**world.headers("a-feed"), "Content-Type": "application/fhir+json"},
    )
    assert created.status_code == 201
    pid = created.json()["id"]
    sees = {"a-doc", "a-doc2", "a-feed"}
    same_type_other_org = {"b-doc", "b-feed"}
    readers = sees | same_type_other_org
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": f"Patient/{pid}"},
    }
    cases: list[tuple[str, str, Any, dict[str | None, int]]] = [
        (
            "GET",
            f"/fhir/Patient/{pid}",
            None,
            {**{w: 200 for w in sees}, **{w: 404 for w in same_type_other_org}},
        ),
        ("GET", f"/fhir/Patient/{pid}/_history", None, {**{w: 200 for w in readers}}),
        ("GET", f"/fhir/Patient?_id={pid}", None, {**{w: 200 for w in readers}, "uni-res": 200}),
        ("POST", "/fhir/Observation", observation, {w: 201 for w in readers}),
        ("DELETE", f"/fhir/Observation/{uuid.uuid4()}", None, {w: 204 for w in readers}),
    ]
    problems = []
    refused: list[str] = []
    for method, path, body, expected in cases:
        for who in [None, *EVERYONE]:
            rid = uuid.uuid4().hex
            headers = {**world.headers(who), "X-Request-ID": rid}
            content = None
            if body is not None:
                content = json.dumps(body).encode()
                headers["Content-Type"] = "application/fhir+json"
            response = world.client.request(method, path, content=content, headers=headers)
            want = expected.get(who, 401 if who is None else 403)
            if response.status_code != want:
                problems.append(f"{who} {method} {path}: {response.status_code} != {want}")
            if want in (401, 403):
                refused.append(rid)
            if response.status_code == 200 and "_id=" in path:
                bundle = response.json()
                total = bundle["total"]
                if who in same_type_other_org and total != 0:
                    problems.append(f"LEAK: {who} found hospital A's patient by _id")
                if who == "uni-res":
                    resource = bundle["entry"][0]["resource"]
                    if "name" in resource or resource["id"] == pid:
                        problems.append("LEAK: the researcher saw identifiers")
            if (
                response.status_code == 200
                and path.endswith("/_history")
                and who in same_type_other_org
                and response.json()["total"] != 0
            ):
                problems.append(f"LEAK: {who} read hospital A's history")
    assert not problems, "\n".join(problems)
    with world.services.db.read() as conn:
        audited = set(
            conn.execute(
                select(audit_events.c.request_id).where(audit_events.c.outcome == 4)
            ).scalars()
        )
    assert not [r for r in refused if r not in audited]


def test_fhir_audit_events(world: World) -> None:
    local = world.client.get("/fhir/AuditEvent?_count=200", headers=world.headers("a-sec"))
    assert local.status_code == 200
    entries = local.json()["entry"]
    assert entries and all(
        any(
            a.get("who", {}).get("identifier", {}).get("value") == "hosp-a"
            for a in e["resource"]["agent"]
        )
        for e in entries
    )
    seq = entries[0]["resource"]["id"]
    assert (
        world.client.get(f"/fhir/AuditEvent/{seq}", headers=world.headers("a-sec")).status_code
        == 200
    )
    assert (
        world.client.get(f"/fhir/AuditEvent/{seq}", headers=world.headers("b-sec")).status_code
        == 404
    )
    for who in ("a-doc", "a-feed", "uni-res", "a-admin"):
        assert world.client.get("/fhir/AuditEvent", headers=world.headers(who)).status_code == 403
    assert world.client.post(
        "/fhir/AuditEvent",
        content=b"{}",
        headers={**world.headers("a-sec"), "Content-Type": "application/fhir+json"},
    ).status_code in (400, 403)
    patient = world.client.get(
        "/fhir/AuditEvent?patient=P-1&date=ge2020-01-01", headers=world.headers("ops-sec")
    ).json()
    assert all(
        any(
            e2.get("what", {}).get("reference") == "Patient/P-1"
            for e2 in e["resource"].get("entity", [])
        )
        for e in patient["entry"]
    )
