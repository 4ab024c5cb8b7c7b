"""The warehouse end to end on SQLite and PostgreSQL: a Synthea Bundle loaded
through the FHIR API, ViewDefinitions stored over HTTP, materialized into
encrypted Parquet parts (de-identified), refreshed incrementally after
creates, updates and deletes, queried with DuckDB; ``ViewDefinition/$run``
and ``$export`` over HTTP under access control."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from salus.jobs import Worker
from tests.conftest import BACKENDS
from tests.integration.security_world import World, make_world

FHIR = "application/fhir+json"
SYNTHEA = Path(__file__).resolve().parents[1] / "data" / "fhir" / "synthea"

PATIENTS = {
    "resourceType": "ViewDefinition",
    "name": "patient_demographics",
    "resource": "Patient",
    "status": "active",
    "select": [
        {
            "column": [
                {"name": "patient_key", "path": "getResourceKey()", "type": "string"},
                {"name": "gender", "path": "gender", "type": "code"},
                {"name": "birth", "path": "birthDate", "type": "date"},
                {"name": "family", "path": "name.family.first()", "type": "string"},
            ]
        }
    ],
}
OBSERVATIONS = {
    "resourceType": "ViewDefinition",
    "name": "observation_values",
    "resource": "Observation",
    "status": "active",
    "select": [
        {
            "column": [
                {"name": "obs_key", "path": "getResourceKey()", "type": "string"},
                {"name": "patient_key", "path": "subject.getReferenceKey(Patient)"},
                {"name": "code", "path": "code.coding.code.first()", "type": "code"},
                {"name": "value", "path": "value.ofType(Quantity).value", "type": "decimal"},
            ]
        }
    ],
}


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with make_world(request.param, tmp_path_factory.mktemp("warehouse")) as built:
        assert built.services.warehouse is not None
        built.services.warehouse.materializer.lag = timedelta(0)
        path = sorted(SYNTHEA.glob("*.json.gz"))[0]
        bundle = json.loads(gzip.open(path).read())
        response = fhir(built, "a-feed", "POST", "", bundle)
        assert response.status_code == 200, response.text[:500]
        yield built


def fhir(
    world: World, who: str | None, method: str, path: str, body: Any = None, **params: Any
) -> Any:
    headers = world.headers(who)
    content = None
    if body is not None:
        content = json.dumps(body).encode()
        headers["Content-Type"] = FHIR
    url = f"/fhir/{path}" if path else "/fhir"
    return world.client.request(method, url, content=content, headers=headers, params=params)


def search(world: World, who: str, query: str) -> list[dict[str, Any]]:
    response = fhir(world, who, "GET", query)
    assert response.status_code == 200, response.text
    return [e["resource"] for e in response.json().get("entry", [])]


def run(world: World, who: str | None, view: dict[str, Any], **params: Any) -> Any:
    body = {"resourceType": "Parameters", "parameter": [{"name": "viewResource", "resource": view}]}
    return fhir(world, who, "POST", "ViewDefinition/$run", body, **params)


def sql(world: World, who: str, text: str) -> Any:
    return world.call(who, "POST", "/api/v1/warehouse/query", json={"sql": text})


def define(world: World, view: dict[str, Any]) -> dict[str, Any]:
    found = fhir(world, "moh-analyst", "GET", "ViewDefinition").json()
    for entry in found.get("entry", []):
        if entry["resource"]["name"] == view["name"]:
            return dict(entry["resource"])
    response = fhir(world, "moh-analyst", "POST", "ViewDefinition", view)
    assert response.status_code == 201, response.text
    return dict(response.json())


def materialize(world: World, key: str, **params: Any) -> dict[str, Any]:
    response = world.call(
        "moh-analyst", "POST", f"/api/v1/warehouse/views/{key}/$materialize", params=params
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


# -- stored definitions -------------------------------------------------------------------
def test_view_definitions_are_stored_validated_and_guarded(world: World) -> None:
    stored = define(world, PATIENTS)
    assert stored["resourceType"] == "ViewDefinition" and stored["meta"]["versionId"]
    read = fhir(world, "a-doc", "GET", f"ViewDefinition/{stored['id']}")
    assert read.status_code == 200 and read.json()["name"] == "patient_demographics"
    refused = fhir(world, "a-doc", "POST", "ViewDefinition", {**PATIENTS, "name": "mine"})
    assert refused.status_code == 403
    bad = {**PATIENTS, "name": "bad", "select": [{"forEach": "@@"}]}
    invalid = fhir(world, "moh-analyst", "POST", "ViewDefinition", bad)
    assert invalid.status_code == 400
    issue = invalid.json()["issue"][0]
    assert issue["expression"] == ["ViewDefinition.select[0].forEach"]
    clash = fhir(world, "moh-analyst", "POST", "ViewDefinition", PATIENTS)
    assert clash.status_code == 409


# -- materialization, DuckDB, incremental -------------------------------------------------
def test_materialized_views_are_deidentified_and_join_in_duckdb(world: World) -> None:
    define(world, PATIENTS)
    define(world, OBSERVATIONS)
    observations = search(world, "a-feed", "Observation?_count=1000")
    materialize(world, "patient_demographics", full="true")
    report = materialize(world, "observation_values", full="true")
    assert report["rowsTotal"] == len(observations)
    result = sql(
        world,
        "moh-analyst",
        "select count(*) as n, count(p.patient_key) as joined, count(p.family) as names "
        "from observation_values o left join patient_demographics p using (patient_key)",
    )
    assert result.status_code == 200, result.text
    n, joined, names = result.json()["rows"][0]
    assert n == len(observations) and joined == n  # pseudonymous keys still join
    assert names == 0  # no names in the warehouse
    keys = sql(world, "uni-res", "select patient_key from patient_demographics").json()["rows"]
    real = {p["id"] for p in search(world, "a-feed", "Patient")}
    assert keys and all(k[0].startswith("Patient/p-") and k[0][8:] not in real for k in keys)


def test_queries_need_a_warehouse_role_and_cannot_touch_files(world: World) -> None:
    assert sql(world, "a-doc", "select 1").status_code == 403
    assert sql(world, "a-feed", "select 1").status_code == 403
    blocked = sql(world, "moh-analyst", "select * from read_csv('/etc/passwd')")
    assert blocked.status_code == 400
    assert sql(world, "moh-analyst", "select nonsense from nowhere").status_code == 400


def test_incremental_refresh_replaces_only_changed_resources(world: World) -> None:
    define(world, OBSERVATIONS)
    materialize(world, "observation_values")
    quiet = materialize(world, "observation_values")
    assert quiet["resources"] == 0 and quiet["rowsWritten"] == 0
    before = quiet["rowsTotal"]
    observations = [
        o for o in search(world, "a-feed", "Observation?_count=1000") if "valueQuantity" in o
    ]
    changed, gone = observations[0], observations[1]
    changed["valueQuantity"]["value"] = 12345.5
    assert fhir(world, "a-feed", "PUT", f"Observation/{changed['id']}", changed).status_code == 200
    assert fhir(world, "a-feed", "DELETE", f"Observation/{gone['id']}").status_code in (200, 204)
    new = {**changed, "valueQuantity": {"value": 777.25, "unit": "mg"}}
    new.pop("id")
    new.pop("meta", None)
    assert fhir(world, "a-feed", "POST", "Observation", new).status_code == 201
    report = materialize(world, "observation_values")
    assert report["resources"] == 3 and report["rowsWritten"] == 2
    assert report["rowsTotal"] == before
    values = sql(world, "moh-analyst", "select value from observation_values where value > 700")
    assert sorted(r[0] for r in values.json()["rows"]) == [777.25, 12345.5]


# -- $run -------------------------------------------------------------------------------
def test_run_follows_the_callers_access(world: World) -> None:
    own = run(world, "a-doc", PATIENTS)
    assert own.status_code == 200, own.text
    rows = own.json()
    assert rows and all(r["family"] for r in rows)  # identified: own hospital's patients
    assert run(world, "b-doc", PATIENTS).json() == []  # another hospital's records: none
    research = run(world, "uni-res", PATIENTS).json()
    assert len(research) == len(rows)
    assert all(r["family"] is None and r["patient_key"].startswith("Patient/p-") for r in research)
    assert run(world, "moh-analyst", PATIENTS).status_code == 403  # no Patient scope
    assert run(world, None, PATIENTS).status_code == 401


def test_run_formats_limits_and_errors(world: World) -> None:
    text = run(world, "a-doc", OBSERVATIONS, _format="csv").text
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == ["obs_key", "patient_key", "code", "value"] and len(table) > 2
    limited = run(world, "a-doc", OBSERVATIONS, _format="ndjson", _limit="2")
    assert limited.headers["content-type"].startswith("application/x-ndjson")
    assert len(limited.text.splitlines()) == 2
    stored = define(world, OBSERVATIONS)
    by_id = fhir(world, "a-doc", "GET", f"ViewDefinition/{stored['id']}/$run", _limit="1")
    assert by_id.status_code == 200 and len(by_id.json()) == 1
    broken = {**OBSERVATIONS, "select": [{"column": [{"name": "x", "path": "identifier.value"}]}]}
    failed = run(world, "a-doc", {**broken, "resource": "Patient"})
    assert failed.status_code == 422  # several identifiers: not a collection column
    issue = failed.json()["issue"][0]
    assert issue["expression"] == ["ViewDefinition.select[0].column[0].path"]
    values = [i["value"] for p in search(world, "a-feed", "Patient") for i in p["identifier"]]
    assert not any(v in json.dumps(issue) for v in values)  # no patient data in errors
    invalid = run(world, "a-doc", {"resource": "Patient"})
    assert invalid.status_code == 400
    assert invalid.json()["issue"][0]["expression"] == ["ViewDefinition.select"]


# -- $export ------------------------------------------------------------------------------
def test_export_runs_as_a_job_for_its_owner_only(world: World) -> None:
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "view",
                "part": [
                    {"name": "name", "valueString": "obs"},
                    {"name": "viewResource", "resource": OBSERVATIONS},
                ],
            },
            {"name": "_format", "valueCode": "ndjson"},
        ],
    }
    headers = {**world.headers("uni-res"), "Content-Type": FHIR, "Prefer": "respond-async"}
    kick = world.client.post(
        "/fhir/ViewDefinition/$export", content=json.dumps(body), headers=headers
    )
    assert kick.status_code == 202, kick.text
    status_url = kick.headers["Content-Location"].split("/fhir/", 1)[1]
    assert fhir(world, "uni-res", "GET", status_url).status_code == 202
    assert Worker(world.services.jobs, world.services.job_handlers).drain() >= 1
    assert fhir(world, "a-doc", "GET", status_url).status_code == 404  # not theirs
    done = fhir(world, "uni-res", "GET", status_url)
    assert done.status_code == 200, done.text
    outputs = [p for p in done.json()["parameter"] if p["name"] == "output"]
    parts = {p["name"]: p for p in outputs[0]["part"]}
    location = parts["location"]["valueUri"].split("/fhir/", 1)[1]
    file = fhir(world, "uni-res", "GET", location)
    lines = [json.loads(line) for line in file.text.splitlines()]
    assert len(lines) == parts["rows"]["valueInteger"] > 0
    assert all(r["patient_key"] is None or r["patient_key"].startswith("Patient/p-") for r in lines)
    no_async = fhir(world, "uni-res", "POST", "ViewDefinition/$export", body)
    assert no_async.status_code == 400
