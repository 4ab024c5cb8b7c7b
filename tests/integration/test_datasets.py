"""Operational datasets end to end on SQLite and PostgreSQL: schemas and
templates over HTTP, each sample file accepted and mapped to FHIR resources
(checked field by field), every kind of bad submission refused with its
precise report and the warehouse left unchanged, replace-by-period and
append, access control, and ``salus submit`` / ``salus datasets``."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from salus.cli import main
from salus.db.tables import audit_events, fhir_history, fhir_resources
from salus.db.tables_warehouse import dataset_rows, dataset_submissions
from salus.warehouse.datasets.mapping import resource_id
from tests.conftest import BACKENDS
from tests.integration.security_world import World, make_world

DATA = Path(__file__).resolve().parents[1] / "data" / "datasets"
FILES = {
    "staff": "staff.csv",
    "equipment": "equipment.csv",
    "medicines": "medicines.csv",
    "beds": "beds.csv",
    "quality": "quality.json",
}
STAFF_NAMES = ["Nguyễn", "Thị Lan", "Trần", "Văn Minh", "김", "민준", "박", "서연"]


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with make_world(request.param, tmp_path_factory.mktemp("datasets")) as built:
        yield built


def sample(name: str, period: str = "2026-10", org: str = "hosp-a") -> bytes:
    text = (DATA / FILES[name]).read_bytes().decode("utf-8-sig")
    return text.replace("2026-10", period).replace("hosp-a", org).encode()


def post(
    world: World, who: str | None, name: str, body: bytes, media: str = "text/csv", **params: str
) -> Any:
    headers = world.headers(who)
    headers["Content-Type"] = media
    return world.client.post(
        f"/api/v1/datasets/{name}/submissions", content=body, headers=headers, params=params
    )


def read(world: World, who: str, res_type: str, res_id: str) -> Any:
    return world.client.get(f"/fhir/{res_type}/{res_id}", headers=world.headers(who))


def snapshot(world: World) -> tuple[int, ...]:
    with world.services.db.read() as conn:
        return tuple(
            int(conn.execute(select(func.count()).select_from(t)).scalar_one())
            for t in (dataset_rows, dataset_submissions, fhir_resources, fhir_history)
        )


def stored_rows(world: World, dataset: str, period: str, org: str = "hosp-a") -> list[Any]:
    with world.services.db.read() as conn:
        return list(
            conn.execute(
                select(dataset_rows.c.row_key, dataset_rows.c.data).where(
                    (dataset_rows.c.dataset == dataset)
                    & (dataset_rows.c.period == period)
                    & (dataset_rows.c.org_id == org)
                )
            ).all()
        )


def test_schemas_templates_and_json_schemas(world: World) -> None:
    listed = world.client.get("/api/v1/datasets", headers=world.headers("moh-analyst")).json()
    names = [d["name"] for d in listed["datasets"]]
    assert names == ["staff", "equipment", "medicines", "beds", "quality"]
    staff = world.client.get("/api/v1/datasets/staff", headers=world.headers("a-feed")).json()
    assert staff["version"] == "1.0" and staff["mode"] == "replace" and staff["key"] == ["staff_id"]
    assert {c["name"] for c in staff["columns"] if c.get("personal")} == {
        "family_name",
        "given_name",
    }
    template = world.client.get(
        "/api/v1/datasets/medicines/template.csv", headers=world.headers("a-feed")
    )
    assert template.status_code == 200 and template.headers["content-type"].startswith("text/csv")
    header = next(csv.reader(io.StringIO(template.text)))
    assert header[:5] == ["org", "period", "product_code", "product_name", "atc_code"]
    schema = world.client.get(
        "/api/v1/datasets/quality/schema.json", headers=world.headers("a-feed")
    ).json()
    assert schema["type"] == "array" and schema["x-salus-mode"] == "append"
    assert "indicator" in schema["items"]["required"]
    assert world.client.get("/api/v1/datasets").status_code == 401
    assert (
        world.client.get("/api/v1/datasets/nope", headers=world.headers("a-feed")).status_code
        == 404
    )


@pytest.mark.parametrize("name", list(FILES))
def test_each_sample_is_accepted(world: World, name: str) -> None:
    media = "application/json" if name == "quality" else "text/csv"
    before = snapshot(world)
    response = post(world, "a-feed", name, sample(name, "2026-07"), media)
    assert response.status_code == 201, response.text
    summary = response.json()
    expected_rows = {"staff": 5, "equipment": 3, "medicines": 3, "beds": 3, "quality": 4}[name]
    per_row = 2 if name == "staff" else 1
    assert summary["rows"] == expected_rows and summary["period"] == "2026-07"
    assert summary["org"] == "hosp-a" and summary["resources"] == expected_rows * per_row
    after = snapshot(world)
    assert after[0] - before[0] == expected_rows and after[1] - before[1] == 1
    assert len(stored_rows(world, name, "2026-07")) == expected_rows


def test_fhir_resources_field_by_field(world: World) -> None:
    for name in FILES:
        media = "application/json" if name == "quality" else "text/csv"
        assert post(world, "a-feed", name, sample(name, "2026-06"), media).status_code == 201
    practitioner = read(
        world, "a-feed", "Practitioner", resource_id("hosp-a", "staff", "Practitioner", "S004")
    )
    assert practitioner.status_code == 200, practitioner.text
    body = practitioner.json()
    assert body["name"] == [{"use": "official", "family": "김", "given": ["민준"]}]
    assert body["gender"] == "male"
    assert body["identifier"][0] == {
        "system": "urn:salus:org:hosp-a:dataset:staff",
        "value": "S004",
    }
    role = read(
        world,
        "a-feed",
        "PractitionerRole",
        resource_id("hosp-a", "staff", "PractitionerRole", "S001"),
    ).json()
    assert role["code"][0]["coding"][0]["code"] == "doctor"
    assert role["organization"]["reference"] == "Organization/hosp-a"
    assert role["practitioner"]["reference"].endswith(
        resource_id("hosp-a", "staff", "Practitioner", "S001")
    )
    assert role["specialty"] == [{"text": "Nội tổng hợp"}]
    assert role["period"] == {"start": "2019-03-01"}
    device = read(
        world, "a-feed", "Device", resource_id("hosp-a", "equipment", "Device", "CT-01")
    ).json()
    assert device["status"] == "active" and device["modelNumber"] == "SOMATOM go.Up"
    assert device["property"][0]["valueQuantity"][0]["value"] == 12.5  # decimal comma, ';' file
    assert device["property"][0]["valueCode"][0]["coding"][0]["code"] == "maintenance"
    medication = read(
        world,
        "a-feed",
        "Medication",
        resource_id("hosp-a", "medicines", "Medication", "P-AMOX-500"),
    ).json()
    assert medication["code"]["coding"] == [
        {"system": "http://www.whocc.no/atc", "code": "J01CA04", "display": "amoxicillin"}
    ]
    location = read(
        world, "a-feed", "Location", resource_id("hosp-a", "beds", "Location", "W-ICU")
    ).json()
    assert location["name"] == "Hồi sức tích cực"
    assert location["managingOrganization"]["reference"] == "Organization/hosp-a"
    report = read(
        world,
        "a-feed",
        "MeasureReport",
        resource_id("hosp-a", "quality", "MeasureReport", "2026-06|falls|W-MED"),
    ).json()
    assert report["period"] == {"start": "2026-06-01", "end": "2026-06-30"}
    assert report["measure"] == "urn:salus:measure:falls"
    counts = {p["code"]["coding"][0]["code"]: p["count"] for p in report["group"][0]["population"]}
    assert counts == {"numerator": 3, "denominator": 1100}
    assert report["group"][0]["measureScore"]["value"] == round(3 / 1100, 6)
    # staff names go to the (sealed) FHIR bodies only, never to the warehouse table
    for _, data in stored_rows(world, "staff", "2026-06"):
        assert "family_name" not in data and "given_name" not in data
        assert set(data) >= {"staff_id", "role", "fte"}
    beds = {key: data for key, data in stored_rows(world, "beds", "2026-06")}
    assert beds["W-MED"]["occupied_bed_days"] == 1100 and beds["W-MED"]["beds"] == 40


def _edit_csv(name: str, period: str, edit: Any) -> bytes:
    rows = list(csv.reader(io.StringIO(sample(name, period).decode())))
    edit(rows)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode()


def _set(row: int, column: str, value: str) -> Any:
    def edit(rows: list[list[str]]) -> None:
        rows[row][rows[0].index(column)] = value

    return edit


BAD: dict[str, tuple[str, Any, list[tuple[int, str | None, str]]]] = {
    "missing and unknown columns": (
        "staff",
        lambda rows: (
            [r.__setitem__(slice(None), r[:6] + r[7:]) for r in rows]
            + [rows[0].__setitem__(2, "employee")]
        ),
        [
            (0, "employee", "unknown-column"),
            (0, "staff_id", "missing-column"),
            (0, "role", "missing-column"),
        ],
    ),
    "wrong types": (
        "beds",
        lambda rows: [_set(1, "beds", "forty")(rows), _set(2, "admissions", "2.5")(rows)],
        [(1, "beds", "type"), (2, "admissions", "type")],
    ),
    "bad date and code": (
        "staff",
        lambda rows: [_set(3, "start_date", "2021-02-30")(rows), _set(1, "role", "surgeon")(rows)],
        [(1, "role", "code"), (3, "start_date", "type")],
    ),
    "duplicate keys": (
        "equipment",
        None,
        [(3, "device_id", "duplicate-key")],
    ),
    "wrong period": (
        "medicines",
        _set(2, "period", "2026-04"),
        [(2, "period", "wrong-period")],
    ),
    "future period": (
        "beds",
        lambda rows: [_set(i, "period", "2099-01")(rows) for i in range(1, len(rows))],
        [
            (1, "period", "future-period"),
            (2, "period", "future-period"),
            (3, "period", "future-period"),
        ],
    ),
    "another hospital's data": (
        "staff",
        _set(4, "org", "hosp-b"),
        [(4, "org", "wrong-organization")],
    ),
    "bad ATC codes": (
        "medicines",
        lambda rows: [_set(1, "atc_code", "N02BE1")(rows), _set(3, "atc_code", "N02BE99")(rows)],
        [(1, "atc_code", "code-format"), (3, "atc_code", "code-unknown")],
    ),
    "inconsistent stock and range": (
        "medicines",
        lambda rows: [_set(2, "consumed", "9999")(rows), _set(3, "stockout_days", "40")(rows)],
        [(2, "consumed", "inconsistent"), (3, "stockout_days", "range")],
    ),
    "missing required value": (
        "staff",
        _set(2, "family_name", ""),
        [(2, "family_name", "required")],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_submissions_are_refused_and_change_nothing(world: World, case: str) -> None:
    name, edit, expected = BAD[case]
    if case == "duplicate keys":
        text = sample(name, "2026-05").decode()
        lines = text.strip().split("\n")
        body = "\n".join([lines[0], lines[1], lines[2], lines[1]]).encode()  # row 3 = row 1
    else:
        body = _edit_csv(name, "2026-05", edit)
    before = snapshot(world)
    response = post(world, "a-feed", name, body)
    assert response.status_code == 422, response.text
    report = response.json()
    assert report["status"] == "rejected" and report["dataset"] == name
    found = sorted((i["row"], i["column"], i["code"]) for i in report["issues"])
    assert found == sorted(expected)
    assert report["errors"] == len(expected)
    assert all(i["message"] for i in report["issues"])
    for person in STAFF_NAMES:
        assert person not in response.text
    assert snapshot(world) == before
    assert stored_rows(world, name, "2026-05") == []


def test_bad_encodings_and_shapes(world: World) -> None:
    before = snapshot(world)
    latin1 = (
        sample("staff", "2026-05")
        .decode()
        .replace("Trần", "Tr\u00e2n")
        .encode("latin-1", "replace")
    )
    response = post(world, "a-feed", "staff", latin1)
    assert response.status_code == 422
    assert [i["code"] for i in response.json()["issues"]] == ["encoding"]
    response = post(world, "a-feed", "quality", b'{"org": "hosp-a"}', "application/json")
    assert [i["code"] for i in response.json()["issues"]] == ["format"]
    response = post(world, "a-feed", "quality", b" [ ] ", "application/json")
    assert [i["code"] for i in response.json()["issues"]] == ["empty"]
    response = post(world, "a-feed", "beds", b"org,period,ward_id\n", "text/csv")
    assert {i["code"] for i in response.json()["issues"]} == {"missing-column"}
    response = post(world, "a-feed", "beds", b'org,period\n"hosp-a,2026-05\n')
    assert response.status_code == 422
    response = post(world, "a-feed", "beds", sample("beds", "2026-05"), period="2026-04")
    assert {i["code"] for i in response.json()["issues"]} == {"wrong-period"}
    assert snapshot(world) == before


def test_replace_by_period(world: World) -> None:
    assert post(world, "a-feed", "beds", sample("beds", "2026-03")).status_code == 201
    assert post(world, "a-feed", "beds", sample("beds", "2026-04")).status_code == 201
    # April again, without the maternity ward and with changed counts
    body = _edit_csv("beds", "2026-04", lambda rows: [_set(1, "beds", "42")(rows), rows.pop(3)])
    response = post(world, "a-feed", "beds", body)
    assert response.status_code == 201, response.text
    assert response.json()["replaced"] == 3 and response.json()["rows"] == 2
    april = {key: data for key, data in stored_rows(world, "beds", "2026-04")}
    assert sorted(april) == ["W-ICU", "W-MED"] and april["W-MED"]["beds"] == 42
    assert len(stored_rows(world, "beds", "2026-03")) == 3  # other periods untouched
    # W-MAT is still described by March: its Location stays
    mat = resource_id("hosp-a", "beds", "Location", "W-MAT")
    assert read(world, "a-feed", "Location", mat).status_code == 200
    # a device no other period refers to is deleted with the rows that described it
    extra = sample("equipment", "2026-04") + b"hosp-a;2026-04;TMP-99;monitor;;;active;0;\n"
    assert post(world, "a-feed", "equipment", extra).status_code == 201
    temporary = resource_id("hosp-a", "equipment", "Device", "TMP-99")
    assert read(world, "a-feed", "Device", temporary).status_code == 200
    response = post(world, "a-feed", "equipment", sample("equipment", "2026-04"))
    assert response.status_code == 201 and response.json()["replaced"] == 4
    assert read(world, "a-feed", "Device", temporary).status_code == 410
    vent = resource_id("hosp-a", "equipment", "Device", "VENT-07")
    assert read(world, "a-feed", "Device", vent).status_code == 200


def test_append_mode(world: World) -> None:
    first = json.dumps(
        [
            {
                "org": "hosp-a",
                "period": "2026-02",
                "indicator": "falls",
                "ward_id": "W-MED",
                "numerator": 1,
            }
        ]
    ).encode()
    second = json.dumps(
        [
            {
                "org": "hosp-a",
                "period": "2026-02",
                "indicator": "falls",
                "ward_id": "W-ICU",
                "numerator": 0,
            },
            {"org": "hosp-a", "period": "2026-02", "indicator": "incidents", "numerator": 4},
        ]
    ).encode()
    assert post(world, "a-feed", "quality", first, "application/json").status_code == 201
    response = post(world, "a-feed", "quality", second, "application/json")
    assert response.status_code == 201 and response.json()["replaced"] == 0
    assert len(stored_rows(world, "quality", "2026-02")) == 3
    before = snapshot(world)
    again = json.dumps(
        [
            {
                "org": "hosp-a",
                "period": "2026-02",
                "indicator": "falls",
                "ward_id": "W-OTHER",
                "numerator": 0,
            },
            {
                "org": "hosp-a",
                "period": "2026-02",
                "indicator": "falls",
                "ward_id": "W-MED",
                "numerator": 2,
            },
        ]
    ).encode()
    response = post(world, "a-feed", "quality", again, "application/json")
    assert response.status_code == 422
    assert [(i["row"], i["code"]) for i in response.json()["issues"]] == [(2, "already-submitted")]
    assert snapshot(world) == before


def test_access_control_and_history(world: World) -> None:
    body = sample("beds", "2026-01")
    for who, status in [
        (None, 401),
        ("a-doc", 403),
        ("moh-analyst", 403),
        ("uni-res", 403),
        ("ops-admin", 403),
    ]:
        assert post(world, who, "beds", body).status_code == status, who
    # another hospital's client cannot load hosp-a's rows
    refused = post(world, "b-feed", "beds", body)
    assert refused.status_code == 422
    assert {i["code"] for i in refused.json()["issues"]} == {"wrong-organization"}
    # the hospital administrator and data steward submit for their own organization
    assert post(world, "a-admin", "beds", body).status_code == 201
    assert post(world, "a-steward", "staff", sample("staff", "2026-01")).status_code == 201
    assert post(world, "b-feed", "beds", sample("beds", "2026-01", org="hosp-b")).status_code == 201

    def history(who: str, path: str = "/api/v1/datasets/submissions") -> Any:
        return world.client.get(path, headers=world.headers(who))

    own = history("a-feed").json()["submissions"]
    assert own and {s["org"] for s in own} == {"hosp-a"}
    assert {s["org"] for s in history("b-feed").json()["submissions"]} == {"hosp-b"}
    everyone = history("moh-analyst").json()["submissions"]
    assert {s["org"] for s in everyone} == {"hosp-a", "hosp-b"}
    assert all("issues" not in s and set(s) >= {"rows", "period", "dataset"} for s in everyone)
    beds_only = history("moh-analyst", "/api/v1/datasets/beds/submissions").json()["submissions"]
    assert {s["dataset"] for s in beds_only} == {"beds"}
    assert history("uni-res").status_code == 403
    assert history("a-doc").status_code == 403


def test_audit_records_submissions(world: World) -> None:
    # One accepted and one refused submission of its own (the test runs alone too).
    assert post(world, "a-feed", "beds", sample("beds", "2025-12")).status_code == 201
    assert post(world, "a-feed", "beds", b"org,period,ward_id\n", "text/csv").status_code == 422
    with world.services.db.read() as conn:
        descriptions = set(
            conn.execute(
                select(audit_events.c.description).where(audit_events.c.entity.like("dataset/%"))
            ).scalars()
        )
    assert {"dataset submission accepted", "dataset submission refused"} <= descriptions


def cli(world: World, *args: str) -> Result:
    settings = world.services.settings
    env = {"SALUS_DATA_DIR": str(settings.data_dir), "SALUS_JOBS_ENABLED": "false"}
    if settings.database_url is not None:
        env["SALUS_DATABASE_URL"] = settings.database_url.get_secret_value()
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_cli_submit_and_datasets(world: World, tmp_path: Path) -> None:
    listed = cli(world, "datasets", "list")
    assert listed.exit_code == 0 and "medicines" in listed.output
    template = cli(world, "datasets", "template", "staff")
    assert template.output.startswith("org,period,staff_id,family_name")
    good = tmp_path / "medicines.csv"
    good.write_bytes(sample("medicines", "2025-12"))
    result = cli(world, "submit", "medicines", str(good), "--org", "hosp-a")
    assert result.exit_code == 0, result.output
    assert "accepted medicines 2025-12 for hosp-a: 3 rows" in result.output
    assert len(stored_rows(world, "medicines", "2025-12")) == 3
    bad = tmp_path / "bad.csv"
    bad.write_bytes(_edit_csv("medicines", "2025-11", _set(1, "atc_code", "XX")))
    before = snapshot(world)
    result = cli(world, "submit", "medicines", str(bad), "--org", "hosp-a")
    assert result.exit_code == 1
    assert "code-format" in result.output and "atc_code" in result.output
    assert snapshot(world) == before
    wrong_org = cli(world, "submit", "medicines", str(good), "--org", "moh")
    assert wrong_org.exit_code != 0 and snapshot(world) == before
    history = cli(world, "datasets", "history", "medicines")
    assert "2025-12" in history.output
