"""FHIR search (search.html) on SQLite and PostgreSQL through the HTTP API:
every parameter type, modifiers, prefixes, chains, _has, _include,
_revinclude, sorting, paging and result parameters, and the leak patterns:
nothing another hospital holds comes back through any of them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import BACKENDS
from tests.integration.security_world import World, make_world

FHIR = "application/fhir+json"
LOINC = "http://loinc.org"


def _post(world: World, who: str, resource: dict[str, Any]) -> dict[str, Any]:
    response = world.client.post(
        f"/fhir/{resource['resourceType']}",
        content=json.dumps(resource).encode(),
        headers={**world.headers(who), "Content-Type": FHIR},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _obs(patient: str, code: str, value: float, when: str, unit: str = "mmol/L") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}], "text": f"test {code}"},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": value,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
        },
    }


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with make_world(request.param, tmp_path_factory.mktemp("search")) as built:
        ids: dict[str, str] = {}
        ids["an"] = _post(
            built,
            "a-feed",
            {
                "resourceType": "Patient",
                "name": [{"family": "Nguyễn", "given": ["Văn", "An"]}],
                "gender": "male",
                "birthDate": "1970-05-20",
                "identifier": [{"system": "urn:hosp-a:mrn", "value": "A-1001"}],
            },
        )["id"]
        ids["binh"] = _post(
            built,
            "a-feed",
            {
                "resourceType": "Patient",
                "name": [{"family": "Trần", "given": ["Bình"]}],
                "gender": "female",
                "birthDate": "1988-11-02",
            },
        )["id"]
        ids["kim"] = _post(
            built,
            "b-feed",
            {
                "resourceType": "Patient",
                "name": [{"family": "김", "given": ["민준"]}],
                "gender": "male",
                "birthDate": "1970-01-15",
                "identifier": [{"system": "urn:hosp-b:mrn", "value": "B-77"}],
            },
        )["id"]
        ids["nguyen-b"] = _post(
            built,
            "b-feed",
            {
                "resourceType": "Patient",
                "name": [{"family": "Nguyen", "given": ["Other"]}],
                "gender": "male",
            },
        )["id"]
        ids["o1"] = _post(built, "a-feed", _obs(ids["an"], "2345-7", 5.4, "2026-01-10"))["id"]
        ids["o2"] = _post(built, "a-feed", _obs(ids["an"], "2345-7", 7.9, "2026-02-11"))["id"]
        ids["o3"] = _post(built, "a-feed", _obs(ids["binh"], "718-7", 13.2, "2025-12-24", "g/dL"))[
            "id"
        ]
        ids["o4"] = _post(built, "b-feed", _obs(ids["kim"], "2345-7", 6.1, "2026-01-10"))["id"]
        built.ids = ids  # type: ignore[attr-defined]
        yield built


def search(world: World, who: str, query: str, status: int = 200, **headers: str) -> dict[str, Any]:
    response = world.client.get(f"/fhir/{query}", headers={**world.headers(who), **headers})
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


def ids_of(bundle: dict[str, Any], mode: str = "match") -> set[str]:
    return {
        e["resource"]["id"]
        for e in bundle.get("entry", [])
        if e.get("search", {}).get("mode") == mode
    }


def test_string_search_is_accent_and_case_insensitive(world: World) -> None:
    ids = world.ids  # type: ignore[attr-defined]
    assert ids_of(search(world, "a-feed", "Patient?family=nguyen")) == {ids["an"]}
    assert ids_of(search(world, "a-feed", "Patient?family=NGUY")) == {ids["an"]}
    assert ids_of(search(world, "a-feed", "Patient?family:exact=Nguyễn")) == {ids["an"]}
    assert ids_of(search(world, "a-feed", "Patient?family:exact=nguyen")) == set()
    assert ids_of(search(world, "a-feed", "Patient?name:contains=bin")) == {ids["binh"]}
    assert ids_of(search(world, "b-feed", "Patient?family=김")) == {ids["kim"]}


def test_token_forms(world: World) -> None:
    ids = world.ids  # type: ignore[attr-defined]
    both = {ids["o1"], ids["o2"]}
    assert ids_of(search(world, "a-feed", "Observation?code=2345-7")) == both
    assert ids_of(search(world, "a-feed", f"Observation?code={LOINC}|2345-7")) == both
    assert ids_of(search(world, "a-feed", "Observation?code=other|2345-7")) == set()
    assert ids_of(search(world, "a-feed", f"Observation?code={LOINC}|")) == {*both, ids["o3"]}
    assert ids_of(search(world, "a-feed", "Observation?code:not=2345-7")) == {ids["o3"]}
    assert ids_of(search(world, "a-feed", "Patient?identifier=urn:hosp-a:mrn|A-1001")) == {
        ids["an"]
    }
    assert ids_of(search(world, "a-feed", "Patient?gender=male,female")) == {ids["an"], ids["binh"]}


def test_dates_and_prefixes(world: World) -> None:
    ids = world.ids  # type: ignore[attr-defined]
    assert ids_of(search(world, "a-feed", "Observation?date=2026-01")) == {ids["o1"]}
    assert ids_of(search(world, "a-feed", "Observation?date=ge2026-01-01")) == {
        ids["o1"],
        ids["o2"],
    }
    assert ids_of(search(world, "a-feed", "Observation?date=lt2026")) == {ids["o3"]}
    assert ids_of(search(world, "a-feed", "Observation?date=ge2026-01-01&date=le2026-01-31")) == {
        ids["o1"]
    }
    assert ids_of(search(world, "a-feed", "Patient?birthdate=1970")) == {ids["an"]}
    assert ids_of(search(world, "a-feed", "Patient?birthdate=sa1980")) == {ids["binh"]}
    search(world, "a-feed", "Patient?birthdate=not-a-date", status=400)


def test_quantities(world: World) -> None:
    ids = world.ids  # type: ignore[attr-defined]
    assert ids_of(search(world, "a-feed", "Observation?value-quantity=gt6")) == {
        ids["o2"],
        ids["o3"],
    }
    assert ids_of(search(world, "a-feed", "Observation?value-quantity=5.4")) == {ids["o1"]}
    assert ids_of(
        search(world, "a-feed", "Observation?value-quantity=gt6|http://unitsofmeasure.org|mmol/L")
    ) == {ids["o2"]}


def test_references_and_chains(world: World) -> None:
    ids = world.ids  # type: ignore[attr-defined]
    an = ids["an"]
    both = {ids["o1"], ids["o2"]}
    assert ids_of(search(world, "a-feed", f"Observation?subject=Patient/{an}")) == both
    assert ids_of(search(world, "a-feed", f"Observation?subject:Patient={an}")) == both
    assert ids_of(search(world, "a-feed", f"Observation?patient={an}")) == both
    assert ids_of(search(world, "a-feed", "Observation?subject:Patient.family=nguyen")) == both
    assert ids_of(search(world, "a-feed", "Patient?_has:Observation:subject:code=718-7")) == {
        ids["binh"]
    }


def test_id_last_updated_missing(world: World) -> None:
    ids = world.ids  # type: ignore[attr-defined]
    assert ids_of(search(world, "a-feed", f"Patient?_id={ids['an']},{ids['binh']}")) == {
        ids["an"],
        ids["binh"],
    }
    assert ids_of(search(world, "a-feed", "Patient?_lastUpdated=gt2000-01-01")) >= {ids["an"]}
    assert ids_of(search(world, "a-feed", "Patient?identifier:missing=true")) == {ids["binh"]}


def test_sort_paging_total_and_summary(world: World) -> None:
    ids = world.ids  # type: ignore[attr-defined]
    first = search(world, "a-feed", "Observation?_sort=-date&_count=1&_total=accurate")
    assert first["total"] == 3
    assert "total" not in search(world, "a-feed", "Observation?_sort=-date&_count=1")
    assert [e["resource"]["id"] for e in first["entry"]] == [ids["o2"]]
    next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    second = world.client.get(
        "/fhir/" + next_url.split("/fhir/", 1)[1], headers=world.headers("a-feed")
    ).json()
    assert [e["resource"]["id"] for e in second["entry"]] == [ids["o1"]]
    count = search(world, "a-feed", "Observation?_summary=count")
    assert count["total"] == 3 and "entry" not in count
    trimmed = search(world, "a-feed", f"Patient?_id={ids['an']}&_elements=gender")
    resource = trimmed["entry"][0]["resource"]
    assert set(resource) == {"resourceType", "id", "meta", "gender"}
    assert any(t["code"] == "SUBSETTED" for t in resource["meta"]["tag"])


def test_include_and_revinclude(world: World) -> None:
    ids = world.ids  # type: ignore[attr-defined]
    bundle = search(world, "a-feed", f"Observation?_id={ids['o1']}&_include=Observation:subject")
    assert ids_of(bundle) == {ids["o1"]} and ids_of(bundle, "include") == {ids["an"]}
    rev = search(world, "a-feed", f"Patient?_id={ids['an']}&_revinclude=Observation:subject")
    assert ids_of(rev, "include") == {ids["o1"], ids["o2"]}


def test_unknown_parameters(world: World) -> None:
    search(world, "a-feed", "Patient?shoe-size=42", status=400)
    lenient = search(
        world, "a-feed", "Patient?shoe-size=42&gender=female", Prefer="handling=lenient"
    )
    assert ids_of(lenient) == {world.ids["binh"]}  # type: ignore[attr-defined]
    assert any(e["search"]["mode"] == "outcome" for e in lenient["entry"])


def test_post_search(world: World) -> None:
    response = world.client.post(
        "/fhir/Patient/_search",
        content=b"family=tran",
        headers={**world.headers("a-feed"), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert ids_of(response.json()) == {world.ids["binh"]}  # type: ignore[attr-defined]


# -- leak patterns -----------------------------------------------------------------------
def test_no_leaks_across_hospitals(world: World) -> None:
    ids = world.ids  # type: ignore[attr-defined]
    kim, an = ids["kim"], ids["an"]
    # plain search: hospital B's patient named Nguyen is not found by hospital A
    assert ids_of(search(world, "a-feed", "Patient?family=nguyen")) == {an}
    # chaining into another hospital's patient
    assert ids_of(search(world, "a-feed", "Observation?subject:Patient.family=김")) == set()
    # reverse chaining on another hospital's observations
    assert ids_of(search(world, "a-feed", "Patient?_has:Observation:subject:code=2345-7")) == {an}
    # references by id to another hospital's patient
    assert ids_of(search(world, "a-feed", f"Observation?subject=Patient/{kim}")) == set()
    # _include and _revinclude never bring in what cannot be read
    b_obs = search(world, "b-feed", f"Observation?_id={ids['o4']}&_include=Observation:subject")
    assert ids_of(b_obs, "include") == {kim}
    assert ids_of(search(world, "a-feed", f"Observation?_id={ids['o4']}")) == set()
    rev = search(world, "a-feed", f"Patient?_id={an}&_revinclude=Observation:subject")
    assert ids["o4"] not in ids_of(rev, "include")
    # _id lists and totals do not reveal other hospitals' resources
    bundle = search(world, "a-feed", f"Patient?_id={an},{kim}")
    assert ids_of(bundle) == {an} and bundle["total"] == 1
    # paging links carry only the query, never data
    assert all("Nguy" not in link["url"] for link in bundle["link"])


def test_clinicians_follow_care_relationships(world: World) -> None:
    ids = world.ids  # type: ignore[attr-defined]
    kim = ids["kim"]
    assert ids_of(search(world, "a-doc", f"Observation?subject=Patient/{kim}")) == set()
    assert (
        world.call(
            "a-feed",
            "POST",
            "/api/v1/care/treatment-relationships",
            json={"patient": kim, "source": "Encounter/referral"},
        ).status_code
        == 201
    )
    assert ids_of(search(world, "a-doc", f"Observation?subject=Patient/{kim}")) == {ids["o4"]}
    # the integration client (operations purpose) still does not see hospital B's data
    assert ids_of(search(world, "a-feed", f"Observation?subject=Patient/{kim}")) == set()


def test_researchers_get_pseudonymised_results(world: World) -> None:
    bundle = search(world, "uni-res", "Patient?gender=male")
    assert bundle["total"] >= 2
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert "name" not in resource and "identifier" not in resource
        assert resource["id"].startswith("p-") and "fullUrl" not in entry
        assert resource.get("birthDate", "1970")[:4] == resource.get("birthDate", "1970")
    obs = search(world, "uni-res", "Observation?code=2345-7")
    subjects = {e["resource"]["subject"]["reference"] for e in obs["entry"]}
    assert all(s.startswith("Patient/p-") for s in subjects)
    search(world, "uni-res", f"Patient/{world.ids['an']}", status=403)  # type: ignore[attr-defined]


def test_gzip_responses(world: World) -> None:
    response = world.client.get(
        "/fhir/Patient?_count=100", headers={**world.headers("a-feed"), "Accept-Encoding": "gzip"}
    )
    assert response.status_code == 200
    assert response.headers.get("content-encoding") == "gzip"
    assert response.json()["resourceType"] == "Bundle"  # the client decompresses


def test_reference_identifier_modifier(world: World) -> None:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "by identifier"},
        "subject": {"identifier": {"system": "urn:hosp-a:mrn", "value": "A-1001"}},
    }
    created = _post(world, "a-feed", obs)["id"]
    found = search(world, "a-feed", "Observation?subject:identifier=urn:hosp-a:mrn|A-1001")
    assert ids_of(found) == {created}
    assert ids_of(search(world, "a-feed", "Observation?subject:identifier=A-1001")) == {created}
    assert ids_of(search(world, "b-feed", "Observation?subject:identifier=A-1001")) == set()


def test_composite_and_of_type(world: World) -> None:
    bp = _post(
        world,
        "a-feed",
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
            "subject": {"reference": f"Patient/{world.ids['an']}"},  # type: ignore[attr-defined]
            "component": [
                {
                    "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                    "valueQuantity": {
                        "value": 142,
                        "system": "http://unitsofmeasure.org",
                        "code": "mm[Hg]",
                    },
                },
                {
                    "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                    "valueQuantity": {
                        "value": 91,
                        "system": "http://unitsofmeasure.org",
                        "code": "mm[Hg]",
                    },
                },
            ],
        },
    )["id"]
    systolic_high = "Observation?component-code-value-quantity=http://loinc.org|8480-6$gt140"
    assert ids_of(search(world, "a-feed", systolic_high)) == {bp}
    # the same values on different components do not combine
    mixed = "Observation?component-code-value-quantity=8462-4$gt140"
    assert ids_of(search(world, "a-feed", mixed)) == set()
    glucose = "Observation?code-value-quantity=2345-7$lt6"
    assert ids_of(search(world, "a-feed", glucose)) == {world.ids["o1"]}  # type: ignore[attr-defined]
    search(world, "a-feed", "Observation?code-value-quantity=2345-7", status=400)
    typed = _post(
        world,
        "a-feed",
        {
            "resourceType": "Patient",
            "identifier": [
                {
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                "code": "MR",
                            }
                        ]
                    },
                    "system": "urn:hosp-a:mrn",
                    "value": "A-TYPED-1",
                }
            ],
        },
    )["id"]
    of_type = (
        "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|A-TYPED-1"
    )
    assert ids_of(search(world, "a-feed", of_type)) == {typed}
    assert ids_of(search(world, "b-feed", of_type)) == set()
