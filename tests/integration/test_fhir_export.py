"""FHIR Bulk Data export (Bulk Data Access IG v2, https://hl7.org/fhir/uv/bulkdata/)
end to end through the HTTP API, on SQLite and PostgreSQL: kick-off at the
system, patient and group levels, the job, the status manifest, NDJSON files
from the encrypted blob store, access control, de-identification,
cancellation and the audit trail."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from salus.db.tables import audit_events, bulk_exports
from salus.fhir.bulk import BulkExporter, ExportState
from salus.jobs import JobContext, Worker
from tests.conftest import BACKENDS
from tests.integration.security_world import SYSTEM, World, make_world

FHIR = "application/fhir+json"
ASYNC = {"Prefer": "respond-async", "Accept": FHIR}


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with make_world(request.param, tmp_path_factory.mktemp("export")) as built:
        yield built


# -- helpers ------------------------------------------------------------------------------
def fhir(world: World, who: str | None, method: str, path: str, body: Any = None) -> Any:
    headers = world.headers(who)
    content = None
    if body is not None:
        content = json.dumps(body).encode()
        headers["Content-Type"] = FHIR
    return world.client.request(method, f"/fhir/{path}", content=content, headers=headers)


def create(world: World, who: str, resource: dict[str, Any]) -> dict[str, Any]:
    response = fhir(world, who, "POST", resource["resourceType"], resource)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def patient(world: World, who: str, family: str) -> dict[str, Any]:
    return create(
        world,
        who,
        {"resourceType": "Patient", "name": [{"family": family}], "birthDate": "1971-05-06"},
    )


def observation(world: World, who: str, patient_id: str, text: str = "hb") -> dict[str, Any]:
    return create(
        world,
        who,
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": text},
            "subject": {"reference": f"Patient/{patient_id}"},
        },
    )


def kick_off(
    world: World, who: str | None, path: str = "$export", params: Any = None, **headers: str
) -> Any:
    sent = {**world.headers(who), **ASYNC, **headers}
    return world.client.get(f"/fhir/{path}", params=params, headers=sent)


def local(url: str) -> str:
    return urlsplit(url).path


def drain(world: World) -> int:
    return Worker(world.services.jobs, world.services.job_handlers).drain()


def status(world: World, who: str | None, location: str) -> Any:
    return world.client.get(local(location), headers=world.headers(who))


def export_id(location: str) -> str:
    return local(location).rsplit("/", 1)[-1]


def completed(world: World, who: str, path: str = "$export", params: Any = None) -> Any:
    """Kick off, run the job, and return (location, manifest)."""
    response = kick_off(world, who, path, params)
    assert response.status_code == 202, response.text
    location = response.headers["content-location"]
    drain(world)
    done = status(world, who, location)
    assert done.status_code == 200, done.text
    return location, done.json()


def download(world: World, who: str, manifest: dict[str, Any]) -> dict[str, list[Any]]:
    """Every output file, parsed, by resource type."""
    by_type: dict[str, list[Any]] = {}
    for item in manifest["output"]:
        response = world.client.get(local(item["url"]), headers=world.headers(who))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/fhir+ndjson")
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert len(lines) == item["count"] and response.text.endswith("\n")
        assert all(r["resourceType"] == item["type"] for r in lines)
        by_type.setdefault(item["type"], []).extend(lines)
    return by_type


def exported(world: World, who: str, path: str = "$export", params: Any = None) -> Any:
    _, manifest = completed(world, who, path, params)
    return download(world, who, manifest)


def searched(world: World, who: str, res_type: str, **headers: str) -> list[dict[str, Any]]:
    sent = {**world.headers(who), **headers}
    bundle = world.client.get(f"/fhir/{res_type}?_count=1000", headers=sent).json()
    assert bundle["total"] <= 1000
    return [entry["resource"] for entry in bundle.get("entry", [])]


def by_id(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in resources}


# -- kick-off, job, manifest, files -----------------------------------------------------------
def test_system_export_equals_what_the_caller_can_search(world: World) -> None:
    mine = patient(world, "a-feed", f"Alpha-{uuid.uuid4().hex[:8]}")
    observation(world, "a-feed", mine["id"])
    gone = patient(world, "a-feed", "Deleted")
    assert fhir(world, "a-feed", "DELETE", f"Patient/{gone['id']}").status_code == 204
    theirs = patient(world, "b-feed", "Beta")
    observation(world, "b-feed", theirs["id"])

    location, manifest = completed(world, "a-feed", params={"_type": "Patient,Observation"})
    assert manifest["requiresAccessToken"] is True and manifest["error"] == []
    assert manifest["transactionTime"].endswith("Z")
    assert manifest["request"].endswith("/fhir/$export?_type=Patient%2CObservation")
    assert {item["type"] for item in manifest["output"]} == {"Patient", "Observation"}
    files = download(world, "a-feed", manifest)
    for res_type in ("Patient", "Observation"):
        assert by_id(files[res_type]) == by_id(searched(world, "a-feed", res_type))
    assert mine["id"] in by_id(files["Patient"])
    assert gone["id"] not in by_id(files["Patient"])  # deleted resources are not exported
    assert theirs["id"] not in by_id(files["Patient"])
    again = status(world, "a-feed", location)
    assert again.status_code == 200 and again.headers["content-type"] == "application/json"


def test_hospital_b_never_appears_in_hospital_a_exports(world: World) -> None:
    marker = f"Leak-{uuid.uuid4().hex}"
    theirs = patient(world, "b-feed", marker)
    observation(world, "b-feed", theirs["id"], text=marker)
    patient(world, "a-feed", "Own")
    for who in ("a-feed", "a-doc"):
        _, manifest = completed(world, who)
        raw = b"".join(
            world.client.get(local(item["url"]), headers=world.headers(who)).content
            for item in manifest["output"]
        )
        assert raw and marker.encode() not in raw and theirs["id"].encode() not in raw
        files = download(world, who, manifest)
        assert by_id(files["Patient"]) == by_id(searched(world, who, "Patient"))
    b_files = exported(world, "b-feed", params={"_type": "Patient"})
    assert theirs["id"] in by_id(b_files["Patient"])
    assert all(p["meta"]["versionId"] for p in b_files["Patient"])


def test_type_and_since(world: World) -> None:
    who = patient(world, "a-feed", "Since")
    before = observation(world, "a-feed", who["id"], "before")
    time.sleep(0.02)
    since = datetime.now(UTC)
    time.sleep(0.02)
    after = observation(world, "a-feed", who["id"], "after")
    params = {"_type": "Observation", "_since": since.isoformat().replace("+00:00", "Z")}
    files = exported(world, "a-feed", params=params)
    assert set(files) == {"Observation"}
    ids = set(by_id(files["Observation"]))
    assert after["id"] in ids and before["id"] not in ids
    assert all(r["meta"]["lastUpdated"] > since.isoformat()[:19] for r in files["Observation"])


def test_patient_level_export_is_the_patient_compartments(world: World) -> None:
    org = create(world, "a-feed", {"resourceType": "Organization", "name": "Ward 7"})
    who = patient(world, "a-feed", "Compartment")
    obs = observation(world, "a-feed", who["id"])
    files = exported(world, "a-feed", "Patient/$export")
    assert "Organization" not in files
    assert who["id"] in by_id(files["Patient"]) and obs["id"] in by_id(files["Observation"])
    assert org["id"] not in {r["id"] for rs in files.values() for r in rs}
    assert by_id(files["Patient"]) == by_id(searched(world, "a-feed", "Patient"))


def test_group_export_is_the_members_compartments(world: World) -> None:
    one, two, other = (patient(world, "a-feed", f"Member{i}") for i in range(3))
    kept = [observation(world, "a-feed", p["id"])["id"] for p in (one, two)]
    left_out = observation(world, "a-feed", other["id"])["id"]
    foreign = patient(world, "b-feed", "Foreign")
    foreign_obs = observation(world, "b-feed", foreign["id"])["id"]
    group = create(
        world,
        "a-feed",
        {
            "resourceType": "Group",
            "type": "person",
            "actual": True,
            "member": [
                {"entity": {"reference": f"Patient/{one['id']}"}},
                {"entity": {"reference": f"Patient/{two['id']}"}},
                {"entity": {"reference": f"Patient/{foreign['id']}"}},
                {"entity": {"reference": f"Patient/{other['id']}"}, "inactive": True},
            ],
        },
    )
    files = exported(world, "a-feed", f"Group/{group['id']}/$export")
    assert set(by_id(files["Patient"])) == {one["id"], two["id"]}
    observations = set(by_id(files["Observation"]))
    assert observations == set(kept)
    assert left_out not in observations and foreign_obs not in observations
    typed = exported(world, "a-feed", f"Group/{group['id']}/$export", {"_type": "Patient"})
    assert set(typed) == {"Patient"}
    # Another hospital cannot export (or learn of) this Group.
    assert kick_off(world, "b-feed", f"Group/{group['id']}/$export").status_code == 404
    assert kick_off(world, "a-feed", "Group/no-such-group/$export").status_code == 404


def test_researcher_export_is_pseudonymised(world: World) -> None:
    family = f"Secret-{uuid.uuid4().hex[:8]}"
    who = patient(world, "a-feed", family)
    files = exported(world, "uni-res", params={"_type": "Patient"})
    patients = files["Patient"]
    pseudonym = world.services.fhir_router.pseudonymizer
    assert pseudonym is not None
    assert pseudonym.id("Patient", who["id"]) in by_id(patients)
    assert who["id"] not in by_id(patients)
    assert all("name" not in p and len(p.get("birthDate", "1971")) == 4 for p in patients)
    assert all(any(s["code"] == "PSEUDED" for s in p["meta"]["security"]) for p in patients)
    raw = json.dumps(patients)
    assert family not in raw
    assert by_id(patients) == by_id(searched(world, "uni-res", "Patient"))


# -- access control -------------------------------------------------------------------------
def test_only_the_owner_sees_status_and_files(world: World) -> None:
    patient(world, "a-feed", "Owner")
    location, manifest = completed(world, "a-feed", params={"_type": "Patient"})
    file_url = local(manifest["output"][0]["url"])
    for other in ("a-doc2", "b-feed", "uni-res"):
        assert status(world, other, location).status_code == 404
        assert world.client.get(file_url, headers=world.headers(other)).status_code == 404
        deleted = world.client.delete(local(location), headers=world.headers(other))
        assert deleted.status_code == 404
    assert world.client.get(file_url).status_code == 401  # requiresAccessToken
    assert status(world, "a-feed", location).status_code == 200
    exporter = BulkExporter(world.services)
    assert exporter.owned(SYSTEM, export_id(location)).status is ExportState.COMPLETED
    missing = local(location).rsplit("/", 1)[0] + f"/{uuid.uuid4()}"
    assert world.client.get(missing, headers=world.headers("a-feed")).status_code == 404
    beyond = file_url.rsplit("/", 1)[0] + "/99"
    assert world.client.get(beyond, headers=world.headers("a-feed")).status_code == 404


@pytest.mark.parametrize(
    ("who", "path", "params", "headers", "expected"),
    [
        ("a-feed", "$export", None, {"Prefer": ""}, 400),
        ("a-feed", "$export", None, {"Prefer": "respond-sync"}, 400),
        ("a-feed", "$export", {"_outputFormat": "text/csv"}, {}, 400),
        ("a-feed", "$export", {"_type": "NotAType"}, {}, 400),
        ("a-feed", "$export", {"_since": "yesterday"}, {}, 400),
        ("a-feed", "$export", {"_since": "2026-01-01T00:00:00"}, {}, 400),
        ("a-feed", "$export", {"_typeFilter": "Patient?gender=female"}, {}, 400),
        ("a-feed", "$export", {"whatever": "1"}, {}, 400),
        ("a-feed", "$export", None, {"Accept": "application/fhir+xml"}, 406),
        ("a-steward", "$export", {"_type": "Patient"}, {}, 403),
        ("a-admin", "Patient/$export", {"_type": "Organization,Observation"}, {}, 403),
        ("a-sec", "$export", {"_type": "Patient"}, {}, 403),
        (None, "$export", None, {}, 401),
        ("a-feed", "Group/not%20an%20id/$export", None, {}, 400),
    ],
)
def test_kick_off_is_refused(
    world: World,
    who: str | None,
    path: str,
    params: Any,
    headers: dict[str, str],
    expected: int,
) -> None:
    response = kick_off(world, who, path, params, **headers)
    assert response.status_code == expected, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    assert "content-location" not in response.headers


def test_kick_off_variants_that_are_accepted(world: World) -> None:
    patient(world, "a-feed", "Variant")
    accepted = [
        kick_off(world, "a-feed", params={"_outputFormat": "ndjson"}),
        kick_off(world, "a-feed", params={"_outputFormat": "application/fhir+ndjson"}),
        kick_off(
            world,
            "a-feed",
            params={"_typeFilter": "Patient?gender=female", "_type": "Patient"},
            Prefer="respond-async, handling=lenient",
        ),
        # Types a caller may not search are skipped when _type does not name them.
        kick_off(world, "a-steward"),
    ]
    for response in accepted:
        assert response.status_code == 202, response.text
        assert "/fhir/$export-status/" in response.headers["content-location"]
    drain(world)
    steward = status(world, "a-steward", accepted[-1].headers["content-location"]).json()
    assert "Patient" not in {item["type"] for item in steward["output"]}
    post = world.client.post("/fhir/$export", headers={**world.headers("a-feed"), **ASYNC})
    assert post.status_code == 405


def test_too_many_exports_in_progress(world: World) -> None:
    locations = []
    for _ in range(5):
        response = kick_off(world, "a-doc2", params={"_type": "Patient"})
        assert response.status_code == 202
        locations.append(response.headers["content-location"])
    refused = kick_off(world, "a-doc2", params={"_type": "Patient"})
    assert refused.status_code == 429 and refused.headers["retry-after"]
    for location in locations:
        assert world.client.delete(local(location), headers=world.headers("a-doc2")).status_code
    drain(world)
    assert kick_off(world, "a-doc2", params={"_type": "Patient"}).status_code == 202
    drain(world)


# -- status, cancellation, failure --------------------------------------------------------------
def test_status_while_running_then_cancel(world: World) -> None:
    response = kick_off(world, "a-feed", params={"_type": "Patient"})
    location = response.headers["content-location"]
    waiting = status(world, "a-feed", location)
    assert waiting.status_code == 202 and waiting.headers["x-progress"]
    assert waiting.headers["retry-after"]
    cancelled = world.client.delete(local(location), headers=world.headers("a-feed"))
    assert cancelled.status_code == 202
    assert status(world, "a-feed", location).status_code == 404
    assert world.client.delete(local(location), headers=world.headers("a-feed")).status_code == 404
    drain(world)  # the job finds the export cancelled and does nothing
    exporter = BulkExporter(world.services)
    row = exporter.get(export_id(location))
    assert row.status is ExportState.CANCELLED and row.manifest is None


def test_cancel_during_the_run_stops_it(world: World) -> None:
    for index in range(3):
        patient(world, "a-feed", f"Paged{index}")
    response = kick_off(world, "a-feed", params={"_type": "Patient"})
    location = response.headers["content-location"]
    [job] = world.services.jobs.claim("test-worker")
    pages = []

    class CancellingQueue:
        """The real queue, but the export is cancelled after the first page."""

        def heartbeat(self, job_id: int, worker_id: str) -> bool:
            pages.append(job_id)
            if len(pages) == 2:
                headers = world.headers("a-feed")
                assert world.client.delete(local(location), headers=headers).status_code == 202
            return world.services.jobs.heartbeat(job_id, worker_id)

    exporter = BulkExporter(world.services, page_size=1)
    exporter.run(JobContext(job, CancellingQueue(), "test-worker"))  # type: ignore[arg-type]
    assert world.services.jobs.complete(job.id, "test-worker")
    row = exporter.get(export_id(location))
    assert row.status is ExportState.CANCELLED and row.manifest is None
    assert len(pages) == 2


def test_large_types_are_split_over_files(world: World) -> None:
    who = patient(world, "a-feed", "Many")
    # One transaction: the same lastUpdated for all, so paging must break ties by row.
    entries = [
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": f"obs{index}"},
                "subject": {"reference": f"Patient/{who['id']}"},
            },
            "request": {"method": "POST", "url": "Observation"},
        }
        for index in range(5)
    ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    result = fhir(world, "a-feed", "POST", "", bundle)
    assert result.status_code == 200, result.text
    stamps = {e["response"]["lastModified"] for e in result.json()["entry"]}
    assert len(stamps) == 1
    response = kick_off(world, "a-feed", params={"_type": "Observation"})
    location = response.headers["content-location"]
    [job] = world.services.jobs.claim("test-worker")
    exporter = BulkExporter(world.services, page_size=2, file_resources=3)
    exporter.run(JobContext(job, world.services.jobs, "test-worker"))
    world.services.jobs.complete(job.id, "test-worker")
    manifest = status(world, "a-feed", location).json()
    counts = [item["count"] for item in manifest["output"]]
    assert len(counts) >= 2 and all(count == 4 for count in counts[:-1])
    files = download(world, "a-feed", manifest)
    assert by_id(files["Observation"]) == by_id(searched(world, "a-feed", "Observation"))
    assert sum(counts) == len(files["Observation"]) == len(by_id(files["Observation"]))


def test_a_failed_export_answers_500(world: World) -> None:
    group = create(
        world,
        "a-feed",
        {
            "resourceType": "Group",
            "type": "person",
            "actual": True,
            "member": [{"entity": {"reference": f"Patient/{patient(world, 'a-feed', 'G')['id']}"}}],
        },
    )
    response = kick_off(world, "a-feed", f"Group/{group['id']}/$export")
    assert response.status_code == 202
    assert fhir(world, "a-feed", "DELETE", f"Group/{group['id']}").status_code == 204
    drain(world)  # the Group is gone at run time: the export fails for good
    failed = status(world, "a-feed", response.headers["content-location"])
    assert failed.status_code == 500
    outcome = failed.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "export failed" in outcome["issue"][0]["diagnostics"]


# -- at rest and in the audit trail ---------------------------------------------------------------
def test_ndjson_is_encrypted_at_rest(world: World) -> None:
    family = f"AtRest-{uuid.uuid4().hex[:8]}"
    patient(world, "a-feed", family)
    location, _ = completed(world, "a-feed", params={"_type": "Patient"})
    with world.services.db.read() as conn:
        stored = conn.execute(
            select(bulk_exports.c.manifest).where(bulk_exports.c.id == export_id(location))
        ).scalar_one()
    [item] = stored["files"]
    blobs = world.services.blobs
    assert blobs.encrypted
    assert family.encode() in bytes(blobs.get(item["digest"]))
    reader = blobs.objects.open(item["digest"])
    try:
        raw = reader.read_range(0, reader.size)
    finally:
        reader.close()
    assert family.encode() not in raw and b"Patient" not in raw


def test_exports_are_audited(world: World) -> None:
    patient(world, "a-feed", "Audited")
    location, manifest = completed(world, "a-feed", params={"_type": "Patient"})
    world.client.get(local(manifest["output"][0]["url"]), headers=world.headers("a-feed"))
    status(world, "a-doc2", location)  # someone else's failed attempt
    world.client.delete(local(location), headers=world.headers("a-feed"))
    ident = export_id(location)
    with world.services.db.read() as conn:
        rows = conn.execute(
            select(
                audit_events.c.action,
                audit_events.c.principal_id,
                audit_events.c.entity,
                audit_events.c.outcome,
                audit_events.c.detail,
            ).where(audit_events.c.category == "export")
        ).all()
    mine = [r for r in rows if ident in (r.entity or "") or (r.detail or {}).get("export") == ident]
    seen = {(r.action, r.principal_id, r.outcome) for r in mine}
    feed = "a-feed"
    assert ("E", feed, 0) in seen  # kick-off, and the job's completion
    assert ("R", feed, 0) in seen  # status and file
    assert ("D", feed, 0) in seen  # cancellation
    assert ("R", world.user_ids["a-doc2"], 4) in seen
    descriptions = [r for r in mine if r.action == "E"]
    assert len(descriptions) == 2
    assert any(
        (r.detail or {}).get("type") == "Patient" and r.entity.startswith("$export-file/")
        for r in mine
    )
