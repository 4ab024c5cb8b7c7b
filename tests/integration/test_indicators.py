"""Indicators on a small synthetic network (two hospitals, nine patients, October
2026), on SQLite and PostgreSQL: clinical data through the FHIR API, operational
datasets through the datasets API, every indicator checked against values
computed by hand (below), with small-cell suppression and the access rules.

Hand computation (stays: admission -> discharge, days):
  hosp-a: A1 10-01->10-05 (4), A1 10-20->10-25 (5, died), A2 10-02->10-04 (2),
          A3 10-03->10-10 (7), A4 10-05->10-06 (1), A5 10-07->10-09 (2), A6 10-28-> (in)
  hosp-b: B1 10-01->10-03 (2), B2 10-04->10-08 (4), B3 10-10->10-11 (1)
  admissions a 7 (female 4: A1 x2, A3, A5; male 3), b 3, network 10
  discharges a 6, b 3, network 9; length of stay a 21/6 = 3.5, b 7/3, network 28/9
  mortality a 1/6, b 0/3, network 1/9; readmissions a 1/5 (A1 readmitted after 15 days)
  beds: a (40 beds, 1100 bed-days) + (10, 290) -> 1390 / 1550; b (20, 500) -> 500 / 620
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BACKENDS
from tests.integration.security_world import World, make_world

FHIR = "application/fhir+json"
DATA = Path(__file__).resolve().parents[1] / "data" / "indicators"

# patient -> (hospital, gender, birth year)
PATIENTS = {
    "A1": ("hosp-a", "female", 1950),
    "A2": ("hosp-a", "male", 1990),
    "A3": ("hosp-a", "female", 1990),
    "A4": ("hosp-a", "male", 2015),
    "A5": ("hosp-a", "female", 1970),
    "A6": ("hosp-a", "male", 1985),
    "B1": ("hosp-b", "female", 1980),
    "B2": ("hosp-b", "male", 1960),
    "B3": ("hosp-b", "female", 2000),
}
# encounter -> (patient, start, end, disposition, ICD-10, labs, imaging modalities)
STAYS = {
    "A1-1": ("A1", "10-01", "10-05", "home", "I21.9", 2, ["CT"]),
    "A1-2": ("A1", "10-20", "10-25", "exp", None, 0, []),
    "A2-1": ("A2", "10-02", "10-04", "home", "J18.9", 1, []),
    "A3-1": ("A3", "10-03", "10-10", "home", "J45.9", 1, ["MR"]),
    "A4-1": ("A4", "10-05", "10-06", "home", "S72.0", 0, ["CT"]),
    "A5-1": ("A5", "10-07", "10-09", "home", "C50.9", 1, []),
    "A6-1": ("A6", "10-28", None, None, None, 1, []),
    "B1-1": ("B1", "10-01", "10-03", "home", "J18.9", 1, []),
    "B2-1": ("B2", "10-04", "10-08", "home", "E11.9", 1, ["CT"]),
    "B3-1": ("B3", "10-10", "10-11", "home", None, 0, []),
}


def _bundle(hospital: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []

    def put(resource: dict[str, Any]) -> None:
        url = f"{resource['resourceType']}/{resource['id']}"
        entries.append({"resource": resource, "request": {"method": "PUT", "url": url}})

    for pid, (org, gender, year) in PATIENTS.items():
        if org == hospital:
            put(
                {
                    "resourceType": "Patient",
                    "id": f"ind-{pid}",
                    "gender": gender,
                    "birthDate": f"{year}-06-15",
                }
            )
    for eid, (pid, start, end, disp, icd, labs, modalities) in STAYS.items():
        if PATIENTS[pid][0] != hospital:
            continue
        enc: dict[str, Any] = {
            "resourceType": "Encounter",
            "id": f"ind-{eid}",
            "status": "finished" if end else "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": {"reference": f"Patient/ind-{pid}"},
            "serviceProvider": {"reference": f"Organization/{hospital}"},
            "period": {"start": f"2026-{start}T09:00:00+07:00"},
        }
        if end:
            enc["period"]["end"] = f"2026-{end}T10:00:00+07:00"
            enc["hospitalization"] = {
                "dischargeDisposition": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/discharge-disposition",
                            "code": disp,
                        }
                    ]
                }
            }
        put(enc)
        ref = {"reference": f"Encounter/ind-{eid}"}
        subject = {"reference": f"Patient/ind-{pid}"}
        if icd:
            put(
                {
                    "resourceType": "Condition",
                    "id": f"ind-{eid}-c",
                    "subject": subject,
                    "encounter": ref,
                    "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": icd}]},
                }
            )
        for n in range(labs):
            put(
                {
                    "resourceType": "Observation",
                    "id": f"ind-{eid}-l{n}",
                    "status": "final",
                    "category": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                    "code": "laboratory",
                                }
                            ]
                        }
                    ],
                    "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
                    "subject": subject,
                    "encounter": ref,
                    "effectiveDateTime": f"2026-{start}T12:00:00+07:00",
                    "valueQuantity": {"value": 12.5, "unit": "g/dL"},
                }
            )
        for n, modality in enumerate(modalities):
            put(
                {
                    "resourceType": "ImagingStudy",
                    "id": f"ind-{eid}-i{n}",
                    "status": "available",
                    "subject": subject,
                    "encounter": ref,
                    "started": f"2026-{start}T13:00:00+07:00",
                    "modality": [
                        {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": modality}
                    ],
                }
            )
    # a vital sign: not a laboratory observation
    if hospital == "hosp-a":
        put(
            {
                "resourceType": "Observation",
                "id": "ind-A2-v",
                "status": "final",
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                "code": "vital-signs",
                            }
                        ]
                    }
                ],
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": "Patient/ind-A2"},
                "encounter": {"reference": "Encounter/ind-A2-1"},
                "effectiveDateTime": "2026-10-02T12:00:00+07:00",
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def seed_network(world: World, datasets: str | None = "*") -> None:
    """Post hospital A's and B's FHIR bundles, then their dataset CSVs whose
    name matches ``datasets`` (``"beds"``; ``"*"``: all; None: none)."""
    assert world.services.warehouse is not None
    world.services.warehouse.materializer.lag = timedelta(0)
    for hospital, feed in (("hosp-a", "a-feed"), ("hosp-b", "b-feed")):
        response = world.client.post(
            "/fhir",
            content=json.dumps(_bundle(hospital)),
            headers=world.headers(feed, **{"Content-Type": FHIR}),
        )
        assert response.status_code == 200, response.text[:800]
    for path in sorted(DATA.glob(f"*_{datasets}.csv")) if datasets else []:
        hospital, dataset = path.stem.split("_", 1)
        feed = {"hosp-a": "a-feed", "hosp-b": "b-feed"}[hospital]
        response = world.client.post(
            f"/api/v1/datasets/{dataset}/submissions",
            content=path.read_bytes(),
            headers=world.headers(feed, **{"Content-Type": "text/csv"}),
        )
        assert response.status_code in (200, 201), response.text[:800]


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with make_world(request.param, tmp_path_factory.mktemp("indicators")) as built:
        seed_network(built)
        # the first request materializes the views
        response = built.call(
            "moh-analyst", "GET", "/api/v1/indicators/admissions", params={"refresh": "true"}
        )
        assert response.status_code == 200, response.text
        yield built


def cells(world: World, who: str, ind: str, **params: Any) -> dict[tuple[Any, ...], dict[str, Any]]:
    response = world.call(who, "GET", f"/api/v1/indicators/{ind}", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    dims = body["dimensions"]
    return {tuple(c[d] for d in dims): c for c in body["cells"]}


def value(world: World, who: str, ind: str, hospital: str, **params: Any) -> Any:
    found = cells(world, who, ind, **params)
    return found[(hospital, "2026-10")]["value"]


def test_definitions_listed(world: World) -> None:
    body = world.call("moh-analyst", "GET", "/api/v1/indicators").json()
    ids = {i["id"] for i in body["indicators"]}
    assert len(ids) == 14 and {"admissions", "bed-occupancy", "data-timeliness"} <= ids
    assert all(i["suppression"]["minCell"] == 5 for i in body["indicators"])
    assert world.call("uni-res", "GET", "/api/v1/indicators").status_code == 200
    assert world.call(None, "GET", "/api/v1/indicators").status_code == 401


def test_admissions_and_suppression_by_reader(world: World) -> None:
    moh = cells(world, "moh-analyst", "admissions")
    assert moh[("hosp-a", "2026-10")]["value"] == 7
    assert moh[("network", "2026-10")]["value"] == 10
    b = moh[("hosp-b", "2026-10")]
    assert b["suppressed"] is True and b["value"] is None and b["numerator"] is None
    # hosp-b sees its own small cell; hosp-a does not
    own = cells(world, "b-admin", "admissions")[("hosp-b", "2026-10")]
    assert own == {**own, "value": 3, "suppressed": False}
    assert cells(world, "a-doc", "admissions")[("hosp-b", "2026-10")]["suppressed"] is True
    by_sex = cells(world, "moh-analyst", "admissions", by="sex")
    assert by_sex[("hosp-a", "2026-10", "female")]["suppressed"] is True  # 4 < 5
    assert (
        cells(world, "a-doc", "admissions", by="sex")[("hosp-a", "2026-10", "female")]["value"] == 4
    )
    assert by_sex[("network", "2026-10", "female")]["value"] == 6  # A1 x2, A3, A5, B1, B3


def test_stays(world: World) -> None:
    assert value(world, "moh-analyst", "discharges", "hosp-a") == 6
    assert value(world, "moh-analyst", "discharges", "network") == 9
    assert value(world, "moh-analyst", "average-length-of-stay", "hosp-a") == 3.5
    assert value(world, "moh-analyst", "average-length-of-stay", "network") == round(28 / 9, 4)
    assert value(world, "moh-analyst", "average-length-of-stay", "hosp-b") is None  # 3 stays
    assert value(world, "b-admin", "average-length-of-stay", "hosp-b") == round(7 / 3, 4)


def test_mortality_and_readmissions(world: World) -> None:
    # one death: suppressed everywhere but for hosp-a itself
    assert value(world, "moh-analyst", "in-hospital-mortality", "hosp-a") is None
    assert value(world, "moh-analyst", "in-hospital-mortality", "network") is None
    assert value(world, "a-admin", "in-hospital-mortality", "hosp-a") == round(100 / 6, 4)
    assert value(world, "a-admin", "in-hospital-mortality", "network") is None
    assert value(world, "a-admin", "readmissions-30d", "hosp-a") == 20.0
    b = cells(world, "b-admin", "readmissions-30d")[("hosp-b", "2026-10")]
    assert (b["numerator"], b["denominator"], b["value"]) == (0, 3, 0.0)


def test_diagnoses_labs_imaging(world: World) -> None:
    chapters = cells(world, "a-admin", "diagnoses-by-icd10-chapter")
    got = {k[2]: c["value"] for k, c in chapters.items() if k[0] == "network"}
    assert got == {"X": None, "IX": None, "XIX": None, "II": None, "IV": None}  # all < 5
    assert {k[2]: c["value"] for k, c in chapters.items() if k[0] == "hosp-a"} == {
        "IX": 1,
        "X": 2,
        "XIX": 1,
        "II": 1,
    }
    assert value(world, "moh-analyst", "laboratory-volume", "hosp-a") == 6  # not the vital sign
    assert value(world, "moh-analyst", "laboratory-volume", "network") == 8
    imaging = cells(world, "b-admin", "imaging-volume-by-modality")
    assert imaging[("hosp-b", "2026-10", "CT")]["value"] == 1
    assert imaging[("network", "2026-10", "CT")]["suppressed"] is True  # 3 < 5
    assert imaging[("hosp-a", "2026-10", "MR")]["suppressed"] is True


def test_operational_indicators(world: World) -> None:
    occupancy = cells(world, "moh-analyst", "bed-occupancy")
    assert occupancy[("hosp-a", "2026-10")]["value"] == round(1390 / 1550 * 100, 4)
    assert occupancy[("hosp-b", "2026-10")]["value"] == round(500 / 620 * 100, 4)
    assert occupancy[("network", "2026-10")]["value"] == round(1890 / 2170 * 100, 4)
    wards = cells(world, "moh-analyst", "bed-occupancy", by="ward")
    assert wards[("hosp-a", "2026-10", "W-ICU")]["value"] == round(290 / 310 * 100, 4)
    assert value(world, "moh-analyst", "staff-per-bed", "hosp-a") == round(2.8 / 50, 4)
    assert value(world, "moh-analyst", "staff-per-bed", "hosp-b") == round(1 / 20, 4)
    assert value(world, "moh-analyst", "equipment-availability", "hosp-a") == round(
        (1488 - 252.5) / 1488 * 100, 4
    )
    assert value(world, "moh-analyst", "medicine-stock-outs", "hosp-a") == round(100 / 3, 4)
    assert value(world, "moh-analyst", "data-completeness", "hosp-a") == 100.0
    assert value(world, "moh-analyst", "data-completeness", "hosp-b") == 50.0
    # submitted today, after the 15th of November 2026: late
    assert value(world, "moh-analyst", "data-timeliness", "hosp-a") == 0.0


def test_filters_csv_measure_report_and_refusals(world: World) -> None:
    only = cells(world, "moh-analyst", "admissions", hospital="hosp-a", period="2026-10")
    assert list(only) == [("hosp-a", "2026-10")]
    response = world.call(
        "moh-analyst", "GET", "/api/v1/indicators/admissions", params={"format": "csv"}
    )
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert response.headers["content-type"].startswith("text/csv")
    assert [(r["hospital"], r["value"], r["suppressed"]) for r in rows] == [
        ("hosp-a", "7", "False"),
        ("hosp-b", "", "True"),
        ("network", "10", "False"),
    ]
    bundle = world.call(
        "moh-analyst", "GET", "/api/v1/indicators/in-hospital-mortality/$measure-report"
    ).json()
    reports = {
        e["resource"].get("reporter", {}).get("reference"): e["resource"] for e in bundle["entry"]
    }
    assert reports["Organization/hosp-a"]["group"][0]["extension"][0]["valueCode"] == "masked"
    assert "population" not in reports[None]["group"][0]
    own = world.call(
        "a-admin", "GET", "/api/v1/indicators/in-hospital-mortality/$measure-report"
    ).json()
    group = {
        e["resource"].get("reporter", {}).get("reference"): e["resource"] for e in own["entry"]
    }["Organization/hosp-a"]["group"][0]
    assert [p["count"] for p in group["population"]] == [1, 6]
    assert world.call("moh-analyst", "GET", "/api/v1/indicators/nope").status_code == 404
    bad = world.call("moh-analyst", "GET", "/api/v1/indicators/staff-per-bed", params={"by": "sex"})
    assert bad.status_code == 400
    assert world.call("ops-sec", "GET", "/api/v1/indicators/admissions").status_code == 403
