"""FHIR R4 REST interactions (http.html): create, read, vread, update,
delete, history, conditional versions, Prefer, headers and bad input, on
SQLite and PostgreSQL, through the HTTP API with access control on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from salus.db.tables import audit_events, fhir_resources
from tests.conftest import BACKENDS
from tests.integration.security_world import World, make_world

FHIR = "application/fhir+json"
PATIENT = {
    "resourceType": "Patient",
    "name": [{"family": "Nguyễn", "given": ["Thị", "Bích"]}],
    "gender": "female",
    "birthDate": "1984-03-02",
}


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with make_world(request.param, tmp_path_factory.mktemp("fhir")) as built:
        yield built


def fhir(world: World, who: str, method: str, path: str, body: Any = None, **headers: str) -> Any:
    sent = world.headers(who, **headers)
    content = None
    if body is not None:
        content = json.dumps(body).encode()
        sent.setdefault("Content-Type", FHIR)
    return world.client.request(method, f"/fhir/{path}", content=content, headers=sent)


def created(world: World, who: str = "a-feed", resource: dict[str, Any] | None = None) -> Any:
    response = fhir(world, who, "POST", "Patient", resource or PATIENT)
    assert response.status_code == 201, response.text
    return response


def test_create_and_read(world: World) -> None:
    response = created(world)
    body = response.json()
    assert response.headers["content-type"].startswith(FHIR)
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["location"].endswith(f"/fhir/Patient/{body['id']}/_history/1")
    assert "last-modified" in response.headers
    assert body["meta"]["versionId"] == "1" and body["name"][0]["family"] == "Nguyễn"
    read = fhir(world, "a-feed", "GET", f"Patient/{body['id']}")
    assert read.status_code == 200 and read.json() == body
    assert read.headers["etag"] == 'W/"1"'
    # Both bodies are the JSON that was sealed, byte for byte (UTF-8, not \u escapes).
    assert read.content == response.content and "Nguyễn".encode() in read.content
    vread = fhir(world, "a-feed", "GET", f"Patient/{body['id']}/_history/1")
    assert vread.status_code == 200 and vread.content == read.content


def test_other_hospitals_do_not_see_it(world: World) -> None:
    patient_id = created(world).json()["id"]
    assert fhir(world, "b-feed", "GET", f"Patient/{patient_id}").status_code == 404
    assert fhir(world, "b-doc", "GET", f"Patient/{patient_id}").status_code == 404
    assert fhir(world, "a-doc", "GET", f"Patient/{patient_id}").status_code == 200
    assert fhir(world, "moh-analyst", "GET", f"Patient/{patient_id}").status_code == 403
    assert fhir(world, "a-admin", "GET", f"Patient/{patient_id}").status_code == 403
    assert fhir(world, None, "GET", f"Patient/{patient_id}").status_code == 401


def test_update_versions_and_if_match(world: World) -> None:
    patient = created(world).json()
    changed = {**patient, "gender": "other"}
    stale = fhir(
        world, "a-feed", "PUT", f"Patient/{patient['id']}", changed, **{"If-Match": 'W/"7"'}
    )
    assert stale.status_code == 412
    ok = fhir(world, "a-feed", "PUT", f"Patient/{patient['id']}", changed, **{"If-Match": 'W/"1"'})
    assert ok.status_code == 200 and ok.json()["meta"]["versionId"] == "2"
    assert ok.headers["etag"] == 'W/"2"'
    old = fhir(world, "a-feed", "GET", f"Patient/{patient['id']}/_history/1")
    assert old.status_code == 200 and old.json()["gender"] == "female"
    foreign = fhir(world, "b-feed", "PUT", f"Patient/{patient['id']}", changed)
    assert foreign.status_code == 403


def test_create_on_update_and_id_checks(world: World) -> None:
    new = fhir(
        world, "a-feed", "PUT", "Patient/hosp-a-mrn-1001", {**PATIENT, "id": "hosp-a-mrn-1001"}
    )
    assert new.status_code == 201 and new.json()["id"] == "hosp-a-mrn-1001"
    mismatch = fhir(world, "a-feed", "PUT", "Patient/abc", {**PATIENT, "id": "xyz"})
    assert mismatch.status_code == 400
    assert mismatch.json()["resourceType"] == "OperationOutcome"


def test_delete_then_gone_and_history(world: World) -> None:
    patient = created(world).json()
    path = f"Patient/{patient['id']}"
    assert fhir(world, "a-feed", "PUT", path, {**patient, "gender": "male"}).status_code == 200
    assert fhir(world, "b-feed", "DELETE", path).status_code == 403
    assert fhir(world, "a-feed", "DELETE", path).status_code == 204
    assert fhir(world, "a-feed", "DELETE", path).status_code == 204  # idempotent
    assert fhir(world, "a-feed", "GET", path).status_code == 410
    history = fhir(world, "a-feed", "GET", f"{path}/_history").json()
    assert history["type"] == "history" and history["total"] == 3
    methods = [e["request"]["method"] for e in history["entry"]]
    assert methods == ["DELETE", "PUT", "POST"]
    assert "resource" not in history["entry"][0]
    assert fhir(world, "a-feed", "GET", f"{path}/_history/3").status_code == 410
    again = fhir(world, "a-feed", "PUT", path, {**patient, "gender": "female"})
    assert again.status_code == 201 and again.json()["meta"]["versionId"] == "4"


def test_type_and_system_history_are_filtered(world: World) -> None:
    mine = created(world).json()["id"]
    theirs = created(world, "b-feed").json()["id"]
    ids_a = {
        e["resource"]["id"]
        for e in fhir(world, "a-feed", "GET", "Patient/_history?_count=500").json()["entry"]
        if "resource" in e
    }
    assert mine in ids_a and theirs not in ids_a
    system = fhir(world, "b-feed", "GET", "_history?_count=500").json()
    ids_b = {e["resource"]["id"] for e in system["entry"] if "resource" in e}
    assert theirs in ids_b and mine not in ids_b


def test_prefer_return(world: World) -> None:
    minimal = fhir(world, "a-feed", "POST", "Patient", PATIENT, Prefer="return=minimal")
    assert minimal.status_code == 201 and minimal.content == b""
    assert minimal.headers["location"]
    outcome = fhir(world, "a-feed", "POST", "Patient", PATIENT, Prefer="return=OperationOutcome")
    assert outcome.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    ("method", "path", "content", "headers", "status"),
    [
        ("POST", "Patient", b"{not json", {"Content-Type": FHIR}, 400),
        ("POST", "Patient", b"[1, 2]", {"Content-Type": FHIR}, 400),
        # Not JSON (RFC 8259 §6), though Python's json reads them.
        ("POST", "Patient", b'{"resourceType":"Patient","x":NaN}', {"Content-Type": FHIR}, 400),
        (
            "POST",
            "Patient",
            b'{"resourceType":"Patient","multipleBirthInteger":-Infinity}',
            {"Content-Type": FHIR},
            400,
        ),
        ("POST", "Patient", b'{"resourceType":' + b"[" * 50_000, {"Content-Type": FHIR}, 400),
        # A lone surrogate is no Unicode text: it cannot be stored (was a 500).
        (
            "POST",
            "Patient",
            b'{"resourceType":"Patient","name":[{"family":"\\ud800"}]}',
            {"Content-Type": FHIR},
            400,
        ),
        (
            "PUT",
            "Patient/x",
            b'{"resourceType":"Patient","id":"x","name":[{"text":"a\\udc00"}]}',
            {"Content-Type": FHIR},
            400,
        ),
        (
            "POST",
            "",
            b'{"resourceType":"Bundle","type":"transaction","entry":[{"resource":'
            b'{"resourceType":"Patient","name":[{"family":"\\ud800"}]},'
            b'"request":{"method":"POST","url":"Patient"}}]}',
            {"Content-Type": FHIR},
            400,
        ),
        ("POST", "Patient", b"{}", {"Content-Type": "text/plain"}, 415),
        (
            "POST",
            "Patient",
            json.dumps({"resourceType": "Observation"}).encode(),
            {"Content-Type": FHIR},
            422,
        ),
        ("GET", "Patient/x", None, {"Accept": "application/fhir+xml"}, 406),
        ("GET", "Patient/x?_format=xml", None, {}, 406),
        ("GET", "Patient/not%20an%20id", None, {}, 404),
        ("PATCH", "Patient/x", b"[]", {"Content-Type": "text/plain"}, 415),
        ("GET", "Patient/abc/_history/notanumber", None, {}, 404),
        ("PUT", "Patient/x", b"{}", {"Content-Type": FHIR, "If-Match": "garbage"}, 400),
    ],
)
def test_bad_requests_get_outcomes(
    world: World,
    method: str,
    path: str,
    content: bytes | None,
    headers: dict[str, str],
    status: int,
) -> None:
    sent = {**world.headers("a-feed"), **headers}
    response = world.client.request(method, f"/fhir/{path}", content=content, headers=sent)
    assert response.status_code == status, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    assert response.headers["content-type"].startswith(FHIR)


def test_bodies_are_encrypted_at_rest(world: World) -> None:
    patient_id = created(world).json()["id"]
    with world.services.db.read() as conn:
        body = conn.execute(
            select(fhir_resources.c.body).where(fhir_resources.c.res_id == patient_id)
        ).scalar_one()
    assert b"Nguy" not in bytes(body) and b"1984" not in bytes(body)


def test_reads_and_writes_are_audited(world: World) -> None:
    patient_id = created(world).json()["id"]
    fhir(world, "a-doc", "GET", f"Patient/{patient_id}")
    with world.services.db.read() as conn:
        rows = conn.execute(
            select(audit_events.c.action, audit_events.c.principal_id).where(
                audit_events.c.patient_key == patient_id
            )
        ).all()
    actions = {(a, p) for a, p in rows}
    assert ("C", "a-feed") in actions
    assert ("R", world.user_ids["a-doc"]) in actions
    # Reading a resource in the patient's compartment is an access to that patient too.
    obs = fhir(
        world,
        "a-feed",
        "POST",
        "Observation",
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": f"Patient/{patient_id}"},
        },
    ).json()
    assert fhir(world, "a-doc2", "GET", f"Observation/{obs['id']}").status_code == 200
    with world.services.db.read() as conn:
        readers = set(
            conn.execute(
                select(audit_events.c.principal_id).where(
                    audit_events.c.patient_key == patient_id, audit_events.c.action == "R"
                )
            ).scalars()
        )
    assert world.user_ids["a-doc2"] in readers


def test_reads_by_id_run_on_the_event_loop(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read or vread by id runs in the event loop thread, without a thread
    hand-off: on SQLite the router's ``handle`` and its lookup in the local
    file; on PostgreSQL ``handle_async``, its statement on the database's
    async connections (ADR 11, stop-15 amendment: the loop serves other
    requests during the round trip). Every other interaction runs in a worker
    thread. The read is audited before it is answered."""
    db = world.services.db
    patient = created(world).json()
    router = world.services.fhir_router
    calls: list[tuple[str, str, bool]] = []

    def in_loop() -> bool:
        try:
            asyncio.get_running_loop()
            return True
        except RuntimeError:  # a worker thread has no running loop
            return False

    def recorded(name: str, fn: Any) -> Any:
        def sync(*args: Any) -> Any:
            calls.append((name, getattr(args[0], "path", ""), in_loop()))
            return fn(*args)

        async def coroutine(*args: Any) -> Any:
            calls.append((name, getattr(args[0], "path", ""), in_loop()))
            return await fn(*args)

        return coroutine if asyncio.iscoroutinefunction(fn) else sync

    monkeypatch.setattr(router, "handle", recorded("handle", router.handle))
    monkeypatch.setattr(router, "handle_async", recorded("handle_async", router.handle_async))
    monkeypatch.setattr(db, "fetch_one", recorded("fetch_one", db.fetch_one))
    monkeypatch.setattr(db, "fetch_one_async", recorded("fetch_one_async", db.fetch_one_async))
    read = f"Patient/{patient['id']}"
    vread = f"{read}/_history/1"

    def audited() -> int:
        with db.read() as conn:
            return len(
                conn.execute(
                    select(audit_events.c.seq).where(
                        audit_events.c.patient_key == patient["id"], audit_events.c.action == "R"
                    )
                ).all()
            )

    before = audited()
    answers = [fhir(world, "a-doc", "GET", path) for path in (read, vread)]
    assert [r.status_code for r in answers] == [200, 200]
    assert answers[0].json() == answers[1].json()
    assert audited() == before + 2
    if db.is_sqlite:
        expected = [
            ("handle", read, True),
            ("fetch_one", "", True),
            ("handle", vread, True),
            ("fetch_one", "", True),
        ]
    else:
        expected = [
            ("handle_async", read, True),
            ("fetch_one_async", "", True),
            ("handle_async", vread, True),
            ("fetch_one_async", "", True),
        ]
    assert calls == expected
    del calls[:]
    assert fhir(world, "a-doc", "GET", f"Patient?_id={patient['id']}").status_code == 200
    assert calls[0] == ("handle", "Patient", False)
    assert not [call for call in calls if call[2]]  # nothing of the search on the loop
    # A refused or missing resource is answered the same way.
    assert fhir(world, "b-doc", "GET", read).status_code == 404
    assert fhir(world, "a-doc", "GET", "Patient/no-such-id").status_code == 404
    # AuditEvent/{id} has the shape of a read by id but is the audit trail's
    # own read: on PostgreSQL it goes to a worker thread.
    del calls[:]
    fhir(world, "a-doc", "GET", "AuditEvent/1")
    assert ("handle", "AuditEvent/1", db.is_sqlite) in calls


def test_validate_operation(world: World) -> None:
    ok = fhir(world, "a-feed", "POST", "Patient/$validate", PATIENT)
    assert ok.status_code == 200
    assert ok.json()["issue"][0]["severity"] == "information"
    bad = fhir(world, "a-feed", "POST", "Patient/$validate", {**PATIENT, "gender": "x"})
    assert bad.status_code == 200
    issue = bad.json()["issue"][0]
    assert issue["severity"] == "error" and issue["expression"] == ["Patient.gender"]
    wrapped = fhir(
        world,
        "a-feed",
        "POST",
        "Patient/$validate",
        {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": PATIENT}]},
    )
    assert wrapped.json()["issue"][0]["severity"] == "information"
    other_profile = fhir(
        world,
        "a-feed",
        "POST",
        "Patient/$validate?profile=http://example.org/StructureDefinition/x",
        PATIENT,
    )
    # A profile the server does not hold is an error issue (profiles: test_fhir_profiles.py).
    assert other_profile.status_code == 200
    assert other_profile.json()["issue"][0]["code"] == "not-found"


def test_invalid_writes_name_the_element(world: World) -> None:
    response = fhir(
        world,
        "a-feed",
        "POST",
        "Patient",
        {**PATIENT, "birthDate": "02/03/1984", "gender": "unknown-ish"},
    )
    assert response.status_code == 400
    expressions = {e for i in response.json()["issue"] for e in i["expression"]}
    assert {"Patient.birthDate", "Patient.gender"} <= expressions
    assert "02/03/1984" not in response.text  # values are never echoed


def test_meta_and_everything(world: World) -> None:
    patient = created(world).json()
    meta = fhir(world, "a-feed", "GET", f"Patient/{patient['id']}/$meta").json()
    assert meta["parameter"][0]["valueMeta"]["versionId"] == "1"
    for code in ("2345-7", "718-7"):
        assert (
            fhir(
                world,
                "a-feed",
                "POST",
                "Observation",
                {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                    "subject": {"reference": f"Patient/{patient['id']}"},
                },
            ).status_code
            == 201
        )
    assert (
        fhir(
            world,
            "b-feed",
            "POST",
            "Observation",
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "b"},
                "subject": {"reference": f"Patient/{patient['id']}"},
            },
        ).status_code
        == 201
    )
    bundle = fhir(world, "a-feed", "GET", f"Patient/{patient['id']}/$everything").json()
    types = sorted(e["resource"]["resourceType"] for e in bundle["entry"])
    assert types == ["Observation", "Observation", "Patient"]  # not hospital B's
    assert fhir(world, "b-feed", "GET", f"Patient/{patient['id']}/$everything").status_code == 404
    assert fhir(world, "uni-res", "GET", f"Patient/{patient['id']}/$everything").status_code == 403


def test_conditional_create_update_delete(world: World) -> None:
    mrn = f"C-{world.user_ids['a-doc'][:6]}"
    with_id = {**PATIENT, "identifier": [{"system": "urn:hosp-a:mrn", "value": mrn}]}
    first = fhir(
        world,
        "a-feed",
        "POST",
        "Patient",
        with_id,
        **{"If-None-Exist": f"identifier=urn:hosp-a:mrn|{mrn}"},
    )
    assert first.status_code == 201
    again = fhir(
        world,
        "a-feed",
        "POST",
        "Patient",
        with_id,
        **{"If-None-Exist": f"identifier=urn:hosp-a:mrn|{mrn}"},
    )
    assert again.status_code == 200 and again.headers["etag"] == 'W/"1"'
    updated = fhir(
        world,
        "a-feed",
        "PUT",
        f"Patient?identifier=urn:hosp-a:mrn|{mrn}",
        {**with_id, "gender": "other"},
    )
    assert updated.status_code == 200 and updated.json()["id"] == first.json()["id"]
    # Hospital B's conditional update does not find A's patient: it creates B's own.
    b_side = fhir(world, "b-feed", "PUT", f"Patient?identifier=urn:hosp-a:mrn|{mrn}", with_id)
    assert b_side.status_code == 201 and b_side.json()["id"] != first.json()["id"]
    assert (
        fhir(world, "b-feed", "DELETE", f"Patient?identifier=urn:hosp-a:mrn|{mrn}").status_code
        == 204
    )
    assert fhir(world, "a-feed", "GET", f"Patient/{first.json()['id']}").status_code == 200
    assert (
        fhir(world, "a-feed", "DELETE", f"Patient?identifier=urn:hosp-a:mrn|{mrn}").status_code
        == 204
    )
    assert fhir(world, "a-feed", "GET", f"Patient/{first.json()['id']}").status_code == 410
    assert fhir(world, "a-feed", "DELETE", "Patient").status_code == 400


def test_patch(world: World) -> None:
    patient = created(world).json()
    path = f"Patient/{patient['id']}"
    json_patch = [
        {"op": "replace", "path": "/gender", "value": "other"},
        {"op": "add", "path": "/telecom", "value": [{"system": "phone", "value": "+84 1"}]},
    ]
    response = world.client.patch(
        f"/fhir/{path}",
        content=json.dumps(json_patch).encode(),
        headers={
            **world.headers("a-feed"),
            "Content-Type": "application/json-patch+json",
            "If-Match": 'W/"1"',
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["gender"] == "other" and response.json()["meta"]["versionId"] == "2"
    fhirpath_patch = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "operation",
                "part": [
                    {"name": "type", "valueCode": "replace"},
                    {"name": "path", "valueString": "Patient.gender"},
                    {"name": "value", "valueCode": "female"},
                ],
            }
        ],
    }
    second = world.client.patch(
        f"/fhir/{path}",
        content=json.dumps(fhirpath_patch).encode(),
        headers={**world.headers("a-feed"), "Content-Type": FHIR},
    )
    assert second.status_code == 200 and second.json()["gender"] == "female"
    stale = world.client.patch(
        f"/fhir/{path}",
        content=json.dumps(json_patch).encode(),
        headers={
            **world.headers("a-feed"),
            "Content-Type": "application/json-patch+json",
            "If-Match": 'W/"1"',
        },
    )
    assert stale.status_code == 412
    invalid = [{"op": "replace", "path": "/gender", "value": "not-a-gender"}]
    bad = world.client.patch(
        f"/fhir/{path}",
        content=json.dumps(invalid).encode(),
        headers={**world.headers("a-feed"), "Content-Type": "application/json-patch+json"},
    )
    assert bad.status_code == 400 and bad.json()["issue"][0]["expression"] == ["Patient.gender"]
    foreign = world.client.patch(
        f"/fhir/{path}",
        content=json.dumps(json_patch).encode(),
        headers={**world.headers("b-feed"), "Content-Type": "application/json-patch+json"},
    )
    assert foreign.status_code == 404


def test_capability_statement(world: World) -> None:
    response = fhir(world, "a-feed", "GET", "metadata")
    assert response.status_code == 200
    statement = response.json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert len(resources) > 140
    patient = resources["Patient"]
    assert {i["code"] for i in patient["interaction"]} >= {
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "create",
        "search-type",
    }
    assert {p["name"] for p in patient["searchParam"]} >= {"family", "birthdate", "identifier"}
    assert {o["name"] for o in statement["rest"][0]["operation"]} >= {
        "export",
        "everything",
        "import",
        "viewdefinition-run",
    }
