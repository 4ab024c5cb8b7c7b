"""FHIR Bulk Data import (``POST /fhir/$import``, async.html request pattern)
end to end through the HTTP API, on SQLite and PostgreSQL: NDJSON in the
body (plain and gzip) or named by URL after an upload to ``$import-file``,
the job, status polling and results, bad lines, access control, SSRF
refusals, cancellation, a job that dies and is resumed, encryption at rest
and the audit trail."""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select, update

from salus.db.tables import audit_events, bulk_imports, jobs
from salus.db.types import utcnow
from salus.fhir.bulkimport import BulkImporter, ImportState
from salus.fhir.importjob import ImportJob
from salus.jobs import JobContext, JobStatus, Worker
from tests.conftest import BACKENDS
from tests.integration.security_world import World, make_world

FHIR = "application/fhir+json"
NDJSON = "application/fhir+ndjson"
MAX_BYTES = 256 * 1024


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("import")
    with make_world(request.param, folder, fhir_import_max_bytes=MAX_BYTES) as built:
        yield built


# -- helpers ------------------------------------------------------------------------------
def ndjson(*resources: Any) -> bytes:
    return b"".join(
        (r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in resources
    )


def local(url: str) -> str:
    return urlsplit(url).path


def kick_off(
    world: World, who: str | None, body: bytes, content_type: str = NDJSON, **headers: str
) -> Any:
    sent = {
        **world.headers(who),
        "Prefer": "respond-async",
        "Accept": FHIR,
        "Content-Type": content_type,
        **headers,
    }
    return world.client.post("/fhir/$import", content=body, headers=sent)


def parameters(*inputs: tuple[str, str | None]) -> bytes:
    params: list[dict[str, Any]] = [{"name": "inputFormat", "valueCode": NDJSON}]
    for url, res_type in inputs:
        parts: list[dict[str, Any]] = [{"name": "url", "valueUrl": url}]
        if res_type:
            parts.append({"name": "type", "valueCode": res_type})
        params.append({"name": "input", "part": parts})
    return json.dumps({"resourceType": "Parameters", "parameter": params}).encode()


def upload(world: World, who: str, body: bytes, **headers: str) -> Any:
    sent = {**world.headers(who), "Content-Type": NDJSON, **headers}
    return world.client.post("/fhir/$import-file", content=body, headers=sent)


def drain(world: World) -> int:
    return Worker(world.services.jobs, world.services.job_handlers).drain()


def status(world: World, who: str | None, location: str) -> Any:
    return world.client.get(local(location), headers=world.headers(who))


def import_id(location: str) -> str:
    return local(location).rsplit("/", 1)[-1]


def imported(world: World, who: str, body: bytes, **headers: str) -> dict[str, Any]:
    """Kick off, run the job, and return the result."""
    response = kick_off(world, who, body, **headers)
    assert response.status_code == 202, response.text
    drain(world)
    done = status(world, who, response.headers["content-location"])
    assert done.status_code == 200, done.text
    assert done.headers["content-type"] == "application/json"
    result: dict[str, Any] = done.json()
    return result


def read(world: World, who: str, res_type: str, res_id: str) -> Any:
    return world.client.get(f"/fhir/{res_type}/{res_id}", headers=world.headers(who))


def without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "meta"}


def patient(marker: str, res_id: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Patient",
        "name": [{"family": marker, "given": ["Thị", "Lan"]}],
        "gender": "female",
        "birthDate": "1984-02-29",
        **extra,
    }
    if res_id:
        body["id"] = res_id
    return body


def observation(res_id: str, patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": res_id,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "valueQuantity": {"value": 13.2, "unit": "g/dL"},
    }


def new_id() -> str:
    return f"imp-{uuid.uuid4().hex[:20]}"


# -- kick-off, polling, results, reading back ----------------------------------------------
def test_ndjson_body_is_imported_and_reads_back_equal(world: World) -> None:
    marker = f"Import{uuid.uuid4().hex[:8]}"
    ids = [new_id() for _ in range(3)]
    resources = [
        patient(marker, ids[0]),
        patient(marker, ids[1], active=True),
        observation(ids[2], ids[0]),
    ]
    anonymous = patient(marker)  # no id: the server assigns one
    response = kick_off(world, "a-feed", ndjson(*resources, anonymous))
    assert response.status_code == 202, response.text
    location = response.headers["content-location"]
    assert "/fhir/$import-status/" in location
    assert response.json()["resourceType"] == "OperationOutcome"
    waiting = status(world, "a-feed", location)
    assert waiting.status_code == 202
    assert waiting.headers["x-progress"] and waiting.headers["retry-after"]
    drain(world)
    done = status(world, "a-feed", location)
    assert done.status_code == 200, done.text
    result = done.json()
    [output] = result["output"]
    assert (output["created"], output["updated"], output["count"]) == (4, 0, 4)
    assert result["error"] == [] and result["rejected"] == []
    assert result["transactionTime"].endswith("Z") and result["request"].endswith("/$import")
    assert local(output["inputUrl"]).startswith("/fhir/$import-file/")
    summary = result["outcome"]["issue"][0]
    assert summary["severity"] == "information" and "4 created" in summary["diagnostics"]
    for resource in resources:
        got = read(world, "a-feed", resource["resourceType"], resource["id"])
        assert got.status_code == 200, got.text
        assert without_meta(got.json()) == resource
        assert got.json()["meta"]["versionId"] == "1"
    found = world.client.get(f"/fhir/Patient?family={marker}", headers=world.headers("a-feed"))
    assert found.json()["total"] == 3
    # The records belong to the importer's organization: hospital B does not see them.
    assert read(world, "b-feed", "Patient", ids[0]).status_code == 404


def test_again_updates_instead_of_duplicating(world: World) -> None:
    res_id = new_id()
    first = imported(world, "a-feed", ndjson(patient("Again", res_id)))
    assert first["output"][0]["created"] == 1
    changed = patient("Again", res_id, active=False)
    second = imported(world, "a-feed", ndjson(changed))
    assert (second["output"][0]["created"], second["output"][0]["updated"]) == (0, 1)
    got = read(world, "a-feed", "Patient", res_id).json()
    assert got["meta"]["versionId"] == "2" and got["active"] is False


def test_gzip_upload_then_parameters_kick_off(world: World) -> None:
    marker = f"Gzip{uuid.uuid4().hex[:8]}"
    ids = [new_id() for _ in range(2)]
    body = gzip.compress(ndjson(*(patient(marker, i) for i in ids)))
    uploaded = upload(world, "a-feed", body, **{"Content-Encoding": "gzip"})
    assert uploaded.status_code == 201, uploaded.text
    file_url = uploaded.headers["location"]
    assert "/fhir/$import-file/" in file_url
    relative = local(file_url).removeprefix("/fhir/")
    plain = upload(world, "a-feed", ndjson(observation(new_id(), ids[0])))
    result = imported(
        world,
        "a-feed",
        parameters((file_url, "Patient"), (relative, None), (plain.headers["location"], None)),
        content_type=FHIR,
    )
    created = [item["created"] for item in result["output"]]
    assert created == [2, 0, 1]  # the same file twice: the second time, updates
    assert [item["updated"] for item in result["output"]] == [0, 2, 0]
    assert result["output"][0]["type"] == "Patient"
    for res_id in ids:
        assert read(world, "a-feed", "Patient", res_id).json()["name"][0]["family"] == marker
    # A gzip body straight to $import.
    res_id = new_id()
    direct = imported(
        world,
        "a-feed",
        gzip.compress(ndjson(patient(marker, res_id))),
        **{"Content-Encoding": "gzip"},
    )
    assert direct["output"][0]["created"] == 1


def test_an_export_of_ones_own_can_be_imported_again(world: World) -> None:
    res_id = new_id()
    imported(world, "a-feed", ndjson(patient("RoundTrip", res_id)))
    sent = {**world.headers("a-feed"), "Prefer": "respond-async", "Accept": FHIR}
    started = world.client.get("/fhir/$export", params={"_type": "Patient"}, headers=sent)
    assert started.status_code == 202
    drain(world)
    manifest = status(world, "a-feed", started.headers["content-location"]).json()
    file_url = manifest["output"][0]["url"]
    result = imported(world, "a-feed", parameters((file_url, "Patient")), content_type=FHIR)
    assert result["output"][0]["updated"] >= 1 and result["rejected"] == []
    # Another hospital may not name it.
    refused = kick_off(world, "b-feed", parameters((file_url, "Patient")), FHIR)
    assert refused.status_code == 404


# -- bad lines -------------------------------------------------------------------------------
def test_bad_lines_are_rejected_with_line_numbers_and_the_rest_imported(world: World) -> None:
    secret = f"Secret{uuid.uuid4().hex[:8]}"
    good = [new_id() for _ in range(3)]
    lines = [
        patient("Good", good[0]),  # 1
        b'{"resourceType": "Patient", "name": [',  # 2: broken JSON
        b"",  # 3: blank, skipped
        {"hello": secret},  # 4: not a resource
        patient(secret, new_id(), unknownElement=secret),  # 5: invalid structure
        patient("Good", good[1]),  # 6
        {"resourceType": "NoSuchType", "id": secret},  # 7
        patient(secret, new_id(), gender=secret),  # 8: code outside the required binding
        patient("Good", good[2]),  # 9
        {"resourceType": "AuditEvent", "id": new_id()},  # 10: nobody writes the audit trail
        b'{"resourceType": "Patient", "name": [{"family": "\\ud800"}]}',  # 11: no Unicode text
    ]
    result = imported(world, "a-feed", ndjson(*lines))
    [output] = result["output"]
    assert (output["created"], output["updated"]) == (3, 0)
    assert result["error"] == [{"inputUrl": output["inputUrl"], "count": 7}]
    rejected = {item["line"]: item for item in result["rejected"]}
    assert sorted(rejected) == [2, 4, 5, 7, 8, 10, 11]
    assert "JSON" in rejected[11]["reason"]
    assert rejected[5]["expression"] == "Patient.unknownElement"
    assert rejected[8]["expression"] == "Patient.gender"
    assert "JSON" in rejected[2]["reason"]
    assert "may not create AuditEvent" in rejected[10]["reason"]
    issues = result["outcome"]["issue"]
    assert "7 lines rejected" in issues[0]["diagnostics"]
    assert {issue["code"] for issue in issues[1:]} >= {"structure", "code-invalid", "forbidden"}
    assert any(" line 5: " in issue["diagnostics"] for issue in issues)
    assert secret not in json.dumps(result)  # never resource content
    for res_id in good:
        assert read(world, "a-feed", "Patient", res_id).status_code == 200


def test_input_type_and_other_hospitals_records(world: World) -> None:
    theirs = new_id()
    imported(world, "b-feed", ndjson(patient("Theirs", theirs)))
    mine = new_id()
    uploaded = upload(world, "a-feed", ndjson(patient("Mine", mine), observation(new_id(), mine)))
    take = patient("Hijack", theirs)
    second = upload(world, "a-feed", ndjson(take))
    result = imported(
        world,
        "a-feed",
        parameters(
            (uploaded.headers["location"], "Patient"), (second.headers["location"], "Patient")
        ),
        content_type=FHIR,
    )
    assert [item["created"] for item in result["output"]] == [1, 0]
    reasons = {(item["line"], item["reason"]) for item in result["rejected"]}
    assert (2, "The input holds Patient resources only.") in reasons
    assert any("organization that holds them" in reason for _, reason in reasons)
    kept = read(world, "b-feed", "Patient", theirs).json()
    assert kept["name"][0]["family"] == "Theirs" and kept["meta"]["versionId"] == "1"


# -- access control ----------------------------------------------------------------------------
def test_readers_cannot_import_and_others_cannot_see(world: World) -> None:
    body = ndjson(patient("Private", new_id()))
    for who in ("uni-res", "moh-analyst", "a-sec", "a-admin"):
        refused = kick_off(world, who, body)
        assert refused.status_code == 403, (who, refused.text)
        assert "content-location" not in refused.headers
        assert upload(world, who, body).status_code == 403
    assert kick_off(world, None, body).status_code == 401
    response = kick_off(world, "a-feed", body)
    location = response.headers["content-location"]
    for other in ("b-feed", "a-doc2", "uni-res"):
        assert status(world, other, location).status_code == 404
        assert world.client.delete(local(location), headers=world.headers(other)).status_code == 404
    assert status(world, None, location).status_code == 401
    file_url = upload(world, "a-feed", body).headers["location"]
    assert kick_off(world, "b-feed", parameters((file_url, None)), FHIR).status_code == 404
    drain(world)
    assert status(world, "a-feed", location).status_code == 200


def test_types_are_decided_per_line(world: World) -> None:
    """A data steward may create Practitioners but not Patients."""
    practitioner = {"resourceType": "Practitioner", "id": new_id(), "name": [{"family": "Bác"}]}
    result = imported(world, "a-steward", ndjson(practitioner, patient("NotYours", new_id())))
    assert result["output"][0]["created"] == 1
    [rejected] = result["rejected"]
    assert rejected["line"] == 2 and "may not create Patient" in rejected["reason"]
    refused = kick_off(world, "a-steward", parameters(("$import-file/x", "Patient")), FHIR)
    assert refused.status_code == 403


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "https://example.org/fhir/Patient.ndjson",
        "file:///etc/passwd",
        "http://testserver.evil/fhir/$import-file/abc",
        "/etc/passwd",
        "$import-file/../../etc/passwd",
        "Patient?name=x",
    ],
)
def test_other_urls_are_never_fetched(world: World, url: str) -> None:
    refused = kick_off(world, "a-feed", parameters((url, None)), FHIR)
    assert refused.status_code == 400, refused.text
    assert refused.json()["resourceType"] == "OperationOutcome"


#: A gzip body cut short (mtime 0: the same bytes, and test id, in every run).
TRUNCATED_GZIP = gzip.compress(b'{"resourceType":"Patient"}\n', mtime=0)[:-12]


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        (b'{"resourceType":"Patient"}\n', {"Prefer": ""}, 400),
        (b'{"resourceType":"Patient"}\n', {"Content-Type": "text/csv"}, 415),
        (b'{"resourceType":"Patient"}\n', {"Accept": "application/fhir+xml"}, 406),
        (b'{"resourceType":"Patient"}\n', {"Content-Encoding": "br"}, 415),
        (b"not gzip at all", {"Content-Encoding": "gzip"}, 400),
        (TRUNCATED_GZIP, {"Content-Encoding": "gzip"}, 400),
        (b"", {}, 400),
        (b"x" * (MAX_BYTES + 10), {}, 413),
        (b'{"resourceType":"Patient"}', {"Content-Type": FHIR}, 400),
        (parameters(), {"Content-Type": FHIR}, 400),
        (
            b'{"resourceType":"Parameters","parameter":[{"name":"inputFormat",'
            b'"valueCode":"text/csv"}]}',
            {"Content-Type": FHIR},
            400,
        ),
        (
            b'{"resourceType":"Parameters","parameter":[{"name":"since"}]}',
            {"Content-Type": FHIR},
            400,
        ),
        (b"[1,2", {"Content-Type": FHIR}, 400),
    ],
)
def test_kick_off_is_refused(
    world: World, body: bytes, headers: dict[str, str], expected: int
) -> None:
    response = kick_off(world, "a-feed", body, **headers)
    assert response.status_code == expected, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    assert "content-location" not in response.headers


def test_too_many_imports_in_progress(world: World) -> None:
    body = ndjson(patient("Busy", new_id()))
    locations = [kick_off(world, "a-doc2", body).headers["content-location"] for _ in range(5)]
    refused = kick_off(world, "a-doc2", body)
    assert refused.status_code == 429 and refused.headers["retry-after"]
    for location in locations:
        world.client.delete(local(location), headers=world.headers("a-doc2"))
    assert kick_off(world, "a-doc2", body).status_code == 202
    drain(world)


# -- cancellation, failure, retry -------------------------------------------------------------
def test_cancel_before_the_job_runs(world: World) -> None:
    res_id = new_id()
    response = kick_off(world, "a-feed", ndjson(patient("Cancelled", res_id)))
    location = response.headers["content-location"]
    cancelled = world.client.delete(local(location), headers=world.headers("a-feed"))
    assert cancelled.status_code == 202
    assert status(world, "a-feed", location).status_code == 404
    assert world.client.delete(local(location), headers=world.headers("a-feed")).status_code == 404
    drain(world)
    assert read(world, "a-feed", "Patient", res_id).status_code == 404
    found = BulkImporter(world.services).get(import_id(location))
    assert found.status is ImportState.CANCELLED


def test_cancel_during_the_run_stops_after_the_committed_batch(world: World) -> None:
    ids = [new_id() for _ in range(4)]
    response = kick_off(world, "a-feed", ndjson(*(patient("Midway", i) for i in ids)))
    location = response.headers["content-location"]
    [job] = world.services.jobs.claim("test-worker")
    beats: list[int] = []

    class CancellingQueue:
        """The real queue, but the import is cancelled after the first batch."""

        def heartbeat(self, job_id: int, worker_id: str) -> bool:
            beats.append(job_id)
            if len(beats) == 2:
                headers = world.headers("a-feed")
                assert world.client.delete(local(location), headers=headers).status_code == 202
            return world.services.jobs.heartbeat(job_id, worker_id)

    importer = BulkImporter(world.services, batch_size=1)
    ImportJob(importer).run(JobContext(job, CancellingQueue(), "test-worker"))  # type: ignore[arg-type]
    assert world.services.jobs.complete(job.id, "test-worker")
    present = [read(world, "a-feed", "Patient", i).status_code for i in ids]
    assert present == [200, 404, 404, 404]  # the batch in hand when cancelled is rolled back
    assert importer.get(import_id(location)).status is ImportState.CANCELLED


def test_a_job_that_dies_is_resumed_where_it_stopped(world: World) -> None:
    marker = f"Resumed{uuid.uuid4().hex[:8]}"
    lines: list[Any] = [patient(marker) for _ in range(7)]  # server-assigned ids
    lines.insert(3, b"{broken")
    response = kick_off(world, "a-feed", ndjson(*lines))
    location = response.headers["content-location"]
    [job] = world.services.jobs.claim("dying-worker")
    beats: list[int] = []

    class DyingQueue:
        """The worker process dies after committing two batches."""

        def heartbeat(self, job_id: int, worker_id: str) -> bool:
            beats.append(job_id)
            if len(beats) == 3:
                raise SystemExit("the worker process died")
            return world.services.jobs.heartbeat(job_id, worker_id)

    importer = BulkImporter(world.services, batch_size=2)
    with pytest.raises(SystemExit):
        ImportJob(importer).run(JobContext(job, DyingQueue(), "dying-worker"))  # type: ignore[arg-type]
    waiting = status(world, "a-feed", location)
    assert waiting.status_code == 202 and waiting.headers["x-progress"].startswith("5 lines")
    # Its lease runs out; another worker claims the job again and finishes it.
    with world.services.db.write() as conn:
        past = utcnow() - timedelta(seconds=1)
        conn.execute(update(jobs).where(jobs.c.id == job.id).values(locked_until=past))
    assert drain(world) >= 1
    assert world.services.jobs.get(job.id).status is JobStatus.DONE
    assert world.services.jobs.get(job.id).attempts == 2
    result = status(world, "a-feed", location).json()
    assert result["output"][0]["created"] == 7
    assert [item["line"] for item in result["rejected"]] == [4]
    found = world.client.get(
        f"/fhir/Patient?family={marker}&_count=50", headers=world.headers("a-feed")
    )
    assert found.json()["total"] == 7  # nothing imported twice


def test_an_import_whose_input_is_gone_fails(world: World) -> None:
    response = kick_off(world, "a-feed", ndjson(patient("Doomed", new_id())))
    location = response.headers["content-location"]
    found = BulkImporter(world.services).get(import_id(location))
    assert found.inputs
    with world.services.db.write() as conn:  # the blob's row now names a missing blob
        params = {
            "inputs": [{**found.inputs[0].to_json(), "digest": "0" * 64}],
            "purpose": found.purpose,
        }
        conn.execute(
            update(bulk_imports).where(bulk_imports.c.id == found.id).values(params=params)
        )
    drain(world)
    failed = status(world, "a-feed", location)
    assert failed.status_code == 500, failed.text
    assert "import failed" in failed.json()["issue"][0]["diagnostics"]


# -- at rest and in the audit trail ----------------------------------------------------------
def test_uploads_are_encrypted_at_rest(world: World) -> None:
    marker = f"AtRest{uuid.uuid4().hex[:8]}"
    response = kick_off(world, "a-feed", ndjson(patient(marker, new_id())))
    found = BulkImporter(world.services).get(import_id(response.headers["content-location"]))
    digest = found.inputs[0].digest
    blobs = world.services.blobs
    assert blobs.encrypted and marker.encode() in bytes(blobs.get(digest))
    reader = blobs.objects.open(digest)
    try:
        raw = reader.read_range(0, reader.size)
    finally:
        reader.close()
    assert marker.encode() not in raw
    drain(world)


def test_imports_are_audited(world: World) -> None:
    res_id = new_id()
    # An upload of its own (the test runs alone, or on another worker, too).
    assert upload(world, "a-feed", ndjson(patient("Uploaded", new_id()))).status_code == 201
    response = kick_off(world, "a-feed", ndjson(patient("Audited", res_id)))
    location = response.headers["content-location"]
    drain(world)
    status(world, "a-feed", location)
    ident = import_id(location)
    with world.services.db.read() as conn:
        rows = conn.execute(
            select(
                audit_events.c.action,
                audit_events.c.entity,
                audit_events.c.outcome,
                audit_events.c.description,
                audit_events.c.detail,
            ).where(audit_events.c.principal_id == "a-feed")
        ).all()
    mine = [r for r in rows if (r.detail or {}).get("import") == ident]
    assert {(r.action, r.description) for r in mine} >= {
        ("E", "bulk import kick-off"),
        ("E", "bulk import completed"),
        ("R", "bulk import status"),
    }
    assert any(r.action == "C" and r.entity == f"Patient/{res_id}" for r in rows)
    assert any(r.action == "C" and r.description == "bulk import upload" for r in rows)
