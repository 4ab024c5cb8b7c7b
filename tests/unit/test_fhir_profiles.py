"""Profiles compiled from StructureDefinitions (salus.fhir.profiles): cardinality,
types, fixed and pattern values, maxLength, required bindings, invariants and
slicing, on the synthetic profiles of tests/data/fhir/profiles."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from salus.errors import InvalidInput
from salus.fhir.profiles import Profile, ProfileIssue, compile_profile, value_set_codes

DATA = Path(__file__).parent.parent / "data" / "fhir" / "profiles"
CCCD = "https://salus.example/sid/vn-cccd"
BHYT = "https://salus.example/sid/vn-bhyt"


def load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DATA / name).read_text(encoding="utf-8"))
    return loaded


STATUS_VS = load("vn-obs-status.json")


def lookup(url: str) -> Mapping[str, frozenset[str]] | None:
    return value_set_codes(STATUS_VS) if url == STATUS_VS["url"] else None


@pytest.fixture(scope="module")
def vn_patient() -> Profile:
    return compile_profile(load("vn-patient.json"))


@pytest.fixture(scope="module")
def heart_rate() -> Profile:
    return compile_profile(load("vn-heart-rate.json"))


def good_patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [
            {"system": "urn:oid:1.2.3", "value": "MRN-1"},
            {"system": CCCD, "value": "001084012345"},
        ],
        "name": [{"family": "Nguyễn", "given": ["Thị", "Lan"]}],
        "gender": "female",
        "birthDate": "1984-02-29",
        "telecom": [{"system": "phone", "value": "0900000000"}],
        "maritalStatus": {"text": "married"},
        "communication": [
            {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "vi"}], "text": "VN"}}
        ],
    }


def good_heart_rate() -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {
            "coding": [
                {"system": "http://example.org/local", "code": "HR"},
                {"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"},
            ]
        },
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-11-20T08:30:00+07:00",
        "valueQuantity": {
            "value": 72,
            "unit": "beats/minute",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }


def errors(issues: list[ProfileIssue]) -> set[tuple[str, str]]:
    return {(i.code, i.expression) for i in issues if i.severity == "error"}


def messages(issues: list[ProfileIssue]) -> str:
    return " | ".join(i.message for i in issues)


# -- a conforming resource -----------------------------------------------------------------
def test_conforming_resources_have_no_errors(vn_patient: Profile, heart_rate: Profile) -> None:
    issues = vn_patient.validate(good_patient(), lookup)
    assert errors(issues) == set()
    # The binding to an unpublished value set is reported once, not checked.
    [info] = [i for i in issues if i.severity == "information"]
    assert info.code == "not-found" and "not checked" in info.message
    assert errors(heart_rate.validate(good_heart_rate(), lookup)) == set()


def test_another_resource_type_is_refused(vn_patient: Profile) -> None:
    [issue] = vn_patient.validate({"resourceType": "Observation"}, lookup)
    assert issue.severity == "error"


# -- cardinality ---------------------------------------------------------------------------
def test_required_elements_and_zero_max(vn_patient: Profile) -> None:
    patient = good_patient()
    del patient["birthDate"], patient["gender"]
    patient["photo"] = [{"contentType": "image/png"}]
    found = errors(vn_patient.validate(patient, lookup))
    assert ("required", "Patient.birthDate") in found
    assert ("required", "Patient.gender") in found
    assert ("structure", "Patient.photo") in found


def test_slice_cardinality_and_slice_rules(vn_patient: Profile) -> None:
    patient = good_patient()
    patient["identifier"] = [{"system": "urn:oid:1.2.3", "value": "MRN-1"}]
    found = errors(vn_patient.validate(patient, lookup))
    assert found == {("required", "Patient.identifier")}  # no citizen-id slice
    patient["identifier"].append({"system": CCCD, "value": "001084012345"})
    patient["identifier"].append({"system": CCCD, "value": "001084099999"})
    issues = vn_patient.validate(patient, lookup)
    assert ("structure", "Patient.identifier") in errors(issues)
    assert "slice 'cccd'" in messages(issues)


def test_slice_children_and_invariants_name_the_item(vn_patient: Profile) -> None:
    patient = good_patient()
    patient["identifier"][1] = {"system": CCCD, "value": "12-34-5678-9012"}
    issues = vn_patient.validate(patient, lookup)
    found = errors(issues)
    assert ("invariant", "Patient.identifier[1]") in found  # vnp-3: 12 digits
    assert ("value", "Patient.identifier[1].value") in found  # maxLength 12
    text = messages(issues)
    assert "vnp-3: A citizen identity number has 12 digits" in text
    assert "12-34-5678-9012" not in text  # never the value
    patient["identifier"][1] = {"system": CCCD}
    assert ("required", "Patient.identifier[1].value") in errors(
        vn_patient.validate(patient, lookup)
    )


def test_pattern_slice_membership(vn_patient: Profile) -> None:
    patient = good_patient()
    patient["identifier"].append({"system": BHYT, "value": "DN4010123456789"})
    assert errors(vn_patient.validate(patient, lookup)) == set()
    patient["identifier"].append({"system": BHYT, "value": "DN4010999999999"})
    issues = vn_patient.validate(patient, lookup)
    assert "at most 1 slice 'bhyt'" in messages(issues)


# -- types, fixed and pattern values, bindings ----------------------------------------------
def test_type_restrictions(vn_patient: Profile, heart_rate: Profile) -> None:
    patient = good_patient()
    patient["deceasedDateTime"] = "2026-01-01"
    patient["generalPractitioner"] = [{"reference": "Organization/o1"}]
    found = errors(vn_patient.validate(patient, lookup))
    assert ("structure", "Patient.deceased.ofType(dateTime)") in found
    assert ("invalid", "Patient.generalPractitioner[0].reference") in found
    patient["deceasedBoolean"] = False
    del patient["deceasedDateTime"]
    patient["generalPractitioner"] = [{"reference": "Practitioner/d1"}]
    assert errors(vn_patient.validate(patient, lookup)) == set()
    observation = good_heart_rate()
    del observation["valueQuantity"]
    observation["valueString"] = "72"
    observation["subject"] = {"reference": "Group/g1"}
    found = errors(heart_rate.validate(observation, lookup))
    assert ("structure", "Observation.value.ofType(string)") in found
    assert ("invalid", "Observation.subject.reference") in found


def test_fixed_values_in_a_type_slice(heart_rate: Profile) -> None:
    observation = good_heart_rate()
    observation["valueQuantity"]["code"] = "/s"
    del observation["valueQuantity"]["value"]
    found = errors(heart_rate.validate(observation, lookup))
    assert ("value", "Observation.value.ofType(Quantity).code") in found
    assert ("required", "Observation.value.ofType(Quantity).value") in found


def test_coding_slice_by_value_discriminators(heart_rate: Profile) -> None:
    observation = good_heart_rate()
    observation["code"]["coding"][1]["code"] = "8310-5"  # body temperature
    issues = heart_rate.validate(observation, lookup)
    assert ("required", "Observation.code.coding") in errors(issues)
    assert "slice 'HeartRateCode'" in messages(issues)


def test_pattern_codeable_concept(vn_patient: Profile) -> None:
    patient = good_patient()
    language = patient["communication"][0]["language"]
    language["coding"] = [{"system": "urn:ietf:bcp:47", "code": "en"}]
    found = errors(vn_patient.validate(patient, lookup))
    assert found == {("value", "Patient.communication[0].language")}


def test_required_bindings(vn_patient: Profile, heart_rate: Profile) -> None:
    patient = good_patient()
    patient["gender"] = "unknown"  # in R4's value set, not in the profile's
    assert errors(vn_patient.validate(patient, lookup)) == {("code-invalid", "Patient.gender")}
    observation = good_heart_rate()
    observation["status"] = "preliminary"
    found = errors(heart_rate.validate(observation, lookup))
    assert found == {("code-invalid", "Observation.status")}
    # Without the stored value set the binding is not checked, only reported.
    issues = heart_rate.validate(observation, None)
    assert errors(issues) == set()
    assert any(i.code == "not-found" for i in issues)


def test_invariants_error_and_warning(vn_patient: Profile, heart_rate: Profile) -> None:
    patient = good_patient()
    patient["birthDate"] = "2999-01-01"
    del patient["telecom"]
    issues = vn_patient.validate(patient, lookup)
    assert ("invariant", "Patient") in errors(issues)
    [warning] = [i for i in issues if i.severity == "warning"]
    assert warning.message.startswith("vnp-2:")
    observation = good_heart_rate()
    observation["valueQuantity"]["value"] = 900
    assert ("invariant", "Observation") in errors(heart_rate.validate(observation, lookup))
    # Base invariants restated in a snapshot (ele-1, obs-6) are not re-evaluated here.
    assert heart_rate.root.rule is not None
    assert [c.key for c in heart_rate.root.rule.constraints] == ["vnhr-1"]


def test_component_zero_max_in_snapshot(heart_rate: Profile) -> None:
    observation = good_heart_rate()
    observation["component"] = [{"code": {"text": "x"}}]
    assert ("structure", "Observation.component") in errors(
        heart_rate.validate(observation, lookup)
    )


# -- compiling ------------------------------------------------------------------------------
def test_differential_without_ids_and_closed_slicing() -> None:
    definition = copy.deepcopy(load("vn-patient.json"))
    for element in definition["differential"]["element"]:
        element.pop("id", None)
    definition["differential"]["element"][1]["slicing"]["rules"] = "closed"
    profile = compile_profile(definition)
    patient = good_patient()
    issues = profile.validate(patient, lookup)
    assert ("structure", "Patient.identifier[0]") in errors(issues)  # MRN matches no slice
    patient["identifier"] = [patient["identifier"][1]]
    assert errors(profile.validate(patient, lookup)) == set()


def test_unknown_elements_in_a_profile_are_reported_not_applied() -> None:
    definition = copy.deepcopy(load("vn-patient.json"))
    definition["differential"]["element"].append(
        {"id": "Patient.nickname", "path": "Patient.nickname", "min": 1}
    )
    profile = compile_profile(definition)
    assert profile.problems and "Patient.nickname" in profile.problems[0]
    assert errors(profile.validate(good_patient(), lookup)) == set()


@pytest.mark.parametrize(
    "definition",
    [
        {"resourceType": "Patient"},
        {"resourceType": "StructureDefinition", "url": "x", "type": "NoSuchType"},
        {"resourceType": "StructureDefinition", "url": "x", "type": "Patient"},
        {
            "resourceType": "StructureDefinition",
            "url": "x",
            "type": "Patient",
            "derivation": "specialization",
            "differential": {"element": []},
        },
    ],
)
def test_unusable_definitions(definition: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        compile_profile(definition)


def test_value_set_codes() -> None:
    assert value_set_codes(STATUS_VS) == {
        "http://hl7.org/fhir/observation-status": frozenset({"final", "amended", "corrected"})
    }
    expanded = {
        "expansion": {
            "contains": [{"system": "s", "code": "a", "contains": [{"system": "s", "code": "b"}]}]
        }
    }
    assert value_set_codes(expanded) == {"s": frozenset({"a", "b"})}
    filtered = {"compose": {"include": [{"system": "s", "filter": [{"op": "is-a"}]}]}}
    assert value_set_codes(filtered) is None
