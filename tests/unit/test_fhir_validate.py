"""FHIR R4 structural validation (salus.fhir.validate) and the R4 model.

Synthea bundles in tests/data/fhir/synthea (Apache-2.0, synthetic) must
validate with no errors; crafted resources must fail with the exact FHIRPath
expression and issue code. The extended test validates every resource of the
43 shared Synthea bundles when ../shared is there.
"""

from __future__ import annotations

import copy
import gzip
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from salus.fhir import model
from salus.fhir.validate import Issue, validate_resource

DATA = Path(__file__).resolve().parent.parent / "data" / "fhir" / "synthea"
REPO = Path(__file__).resolve().parents[2]
SHARED_BUNDLES = REPO.parent / "shared" / "corpora" / "synthea-r4" / "bundles"
MODEL_FILE = Path(model.__file__).resolve().parent / "definitions" / model.MODEL_FILE


def bundle_resources(paths: list[Path]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in paths:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as fh:
            bundle = json.load(fh)
        for i, entry in enumerate(bundle["entry"]):
            yield f"{path.name}#{i}", entry["resource"]


def errors(resource: Any, **kwargs: Any) -> list[tuple[str, str]]:
    """(expression, code) of every error."""
    return [
        (issue.expression, issue.code)
        for issue in validate_resource(resource, **kwargs)
        if issue.severity == "error"
    ]


def patient(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "resourceType": "Patient",
        "id": "p1",
        "name": [{"family": "Doe", "given": ["Jane", "Q"]}],
        "gender": "female",
        "birthDate": "1980-02-29",
    }
    base.update(extra)
    return base


def observation(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2020-01-01T10:00:00Z",
        "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org"},
    }
    base.update(extra)
    return base


# --- valid input ---------------------------------------------------------------


def test_synthea_sample_bundles_are_valid() -> None:
    paths = sorted(DATA.glob("*.json.gz"))
    assert len(paths) == 3
    count = 0
    for where, resource in bundle_resources(paths):
        assert errors(resource) == [], where
        count += 1
    assert count == 78 + 93 + 86


def test_synthea_bundle_as_a_whole_is_valid() -> None:
    path = sorted(DATA.glob("*.json.gz"))[0]
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        assert errors(json.load(fh)) == []


def test_crafted_valid_resources() -> None:
    assert validate_resource(patient()) == []
    assert validate_resource(observation()) == []


def test_primitive_extension_siblings_are_allowed() -> None:
    absent = {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason"}
    absent["valueCode"] = "unknown"
    assert errors(patient(_birthDate={"extension": [absent]})) == []
    without_value = patient(_birthDate={"extension": [absent]})
    del without_value["birthDate"]
    assert errors(without_value) == []
    name = {"given": ["Jane", None], "_given": [None, {"extension": [absent]}]}
    assert errors(patient(name=[name])) == []
    assert errors(observation(_status={"id": "s1"})) == []


def test_extensions_and_contained_are_allowed() -> None:
    ext = [{"url": "http://example.org/x", "valueString": "y"}]
    resource = observation(
        extension=ext,
        modifierExtension=ext,
        contained=[{"resourceType": "Patient", "id": "pat"}],
        subject={"reference": "#pat"},
        text={"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
        meta={"lastUpdated": "2020-01-01T10:00:00.123+02:00"},
    )
    resource["code"]["extension"] = ext
    assert errors(resource) == []


@pytest.mark.parametrize(
    "reference",
    [
        "Patient/123",
        "Group/a.b-c/_history/2",
        "http://example.org/fhir/Patient/123",
        "urn:uuid:6b7a4d3c-1111-4222-8333-944455556666",
        "urn:oid:1.2.3.4",
        "Patient?identifier=http://example.org|42",
    ],
)
def test_valid_reference_formats(reference: str) -> None:
    assert errors(observation(subject={"reference": reference})) == []


# --- crafted failures: (expression, code) ---------------------------------------


def test_not_an_object() -> None:
    assert errors(["not", "a", "resource"]) == [("Resource", "structure")]


def test_unknown_resource_type() -> None:
    assert errors({"resourceType": "Foo", "id": "1"}) == [("Resource", "structure")]
    assert errors({"id": "1"}) == [("Resource", "structure")]
    # abstract types are not resource types either
    assert errors({"resourceType": "DomainResource"}) == [("Resource", "structure")]


def test_unknown_element() -> None:
    assert errors(patient(foo=1)) == [("Patient.foo", "structure")]
    resource = patient()
    resource["name"][0]["middle"] = "X"
    assert errors(resource) == [("Patient.name[0].middle", "structure")]
    # _x is allowed only next to a primitive
    assert errors(patient(_name={"id": "n"})) == [("Patient._name", "structure")]


def test_wrong_primitive_json_type() -> None:
    assert errors(patient(active="true")) == [("Patient.active", "value")]
    assert errors(patient(multipleBirthInteger=1.5)) == [
        ("Patient.multipleBirth.ofType(integer)", "value")
    ]
    assert errors(patient(multipleBirthInteger=True)) == [
        ("Patient.multipleBirth.ofType(integer)", "value")
    ]
    resource = observation()
    resource["valueQuantity"]["value"] = "72"
    assert errors(resource) == [("Observation.value.ofType(Quantity).value", "value")]
    assert errors(patient(gender=1)) == [("Patient.gender", "value")]


def test_integer_ranges() -> None:
    assert errors(patient(multipleBirthInteger=2**31)) == [
        ("Patient.multipleBirth.ofType(integer)", "value")
    ]
    sampled = {"origin": {"value": 0}, "period": 1, "dimensions": 0}
    resource = observation()
    resource["valueSampledData"] = sampled
    del resource["valueQuantity"]
    assert errors(resource) == [("Observation.value.ofType(SampledData).dimensions", "value")]


def test_bad_date() -> None:
    assert errors(patient(birthDate="1980-13-01")) == [("Patient.birthDate", "value")]
    assert errors(patient(birthDate="01/02/1980")) == [("Patient.birthDate", "value")]
    assert errors(observation(effectiveDateTime="2020-01-01T10:00")) == [
        ("Observation.effective.ofType(dateTime)", "value")
    ]


def test_meta_last_updated_must_be_an_instant() -> None:
    assert errors(patient(meta={"lastUpdated": "2020-01-01"})) == [
        ("Patient.meta.lastUpdated", "value")
    ]


def test_bad_id() -> None:
    assert errors(patient(id="bad id!")) == [("Patient.id", "value")]
    assert errors(patient(id="x" * 65)) == [("Patient.id", "value")]


def test_missing_required_elements() -> None:
    resource = observation()
    del resource["status"], resource["code"]
    assert errors(resource) == [
        ("Observation.status", "required"),
        ("Observation.code", "required"),
    ]
    assert errors(patient(link=[{"type": "seealso"}])) == [("Patient.link[0].other", "required")]


def test_update_requires_an_id() -> None:
    resource = patient()
    del resource["id"]
    assert errors(resource, mode="create") == []
    assert errors(resource, mode="any") == []
    assert errors(resource, mode="update") == [("Patient.id", "required")]
    assert errors(patient(), mode="update") == []


def test_array_versus_single_value() -> None:
    assert errors(patient(birthDate=["1980-01-01"])) == [("Patient.birthDate", "structure")]
    assert errors(patient(name={"family": "Doe"})) == [("Patient.name", "structure")]
    assert errors(patient(gender=None)) == [("Patient.gender", "structure")]


def test_choice_type_with_two_variants() -> None:
    resource = observation(valueString="high")
    assert errors(resource) == [("Observation.value", "structure")]
    # a type the choice does not allow is an unknown element
    resource = observation(valueUri="urn:x")
    del resource["valueQuantity"]
    assert errors(resource) == [("Observation.valueUri", "structure")]


@pytest.mark.parametrize(
    "reference",
    ["Patient 123", "patient/123", "Patient/", "Patient/bad id", "urn:isbn:123", "123"],
)
def test_bad_reference_format(reference: str) -> None:
    assert errors(observation(subject={"reference": reference})) == [
        ("Observation.subject.reference", "value")
    ]


def test_reference_to_unknown_type() -> None:
    assert errors(observation(subject={"reference": "Foo/1"})) == [
        ("Observation.subject.reference", "value")
    ]


def test_reference_to_disallowed_type() -> None:
    assert errors(observation(subject={"reference": "Medication/1"})) == [
        ("Observation.subject.reference", "invalid")
    ]
    issue = validate_resource(observation(subject={"reference": "Medication/1"}))[0]
    assert "Patient" in issue.message
    # Reference(Any) takes every type
    assert errors(observation(focus=[{"reference": "Medication/1"}])) == []


def test_reference_to_missing_contained_resource() -> None:
    assert errors(observation(subject={"reference": "#nope"})) == [
        ("Observation.subject.reference", "invalid")
    ]


def test_required_binding_on_code() -> None:
    assert errors(observation(status="bogus")) == [("Observation.status", "code-invalid")]
    assert errors(patient(gender="x")) == [("Patient.gender", "code-invalid")]
    resource = observation()
    resource["valueQuantity"]["comparator"] = "=="
    assert errors(resource) == [("Observation.value.ofType(Quantity).comparator", "code-invalid")]


def test_required_binding_on_codeable_concept_checks_matching_system() -> None:
    system = "http://terminology.hl7.org/CodeSystem/condition-clinical"
    condition = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/p1"},
        "clinicalStatus": {"coding": [{"system": "http://example.org", "code": "whatever"}]},
    }
    assert errors(condition) == []
    condition["clinicalStatus"]["coding"].append({"system": system, "code": "active"})
    assert errors(condition) == []
    condition["clinicalStatus"]["coding"].append({"system": system, "code": "bogus"})
    assert errors(condition) == [("Condition.clinicalStatus.coding[2].code", "code-invalid")]


def test_ele1_empty_values() -> None:
    resource = patient()
    resource["name"][0]["family"] = ""
    assert errors(resource) == [("Patient.name[0].family", "invalid")]
    assert errors(patient(maritalStatus={})) == [("Patient.maritalStatus", "invalid")]
    assert errors(patient(identifier=[])) == [("Patient.identifier", "invalid")]
    assert errors(patient(_birthDate={})) == [("Patient.birthDate", "invalid")]


def test_primitive_string_rules() -> None:
    assert errors(patient(gender="fe male")) == [("Patient.gender", "code-invalid")]
    assert errors(patient(language=" en")) == [("Patient.language", "value")]
    resource = patient()
    resource["name"][0]["given"][1] = "  Q  "  # strings may carry whitespace
    assert errors(resource) == []


def test_narrative_div() -> None:
    text = {"status": "generated", "div": "<p>no div</p>"}
    assert errors(patient(text=text)) == [("Patient.text.div", "value")]
    assert errors(patient(text={"status": "generated"})) == [("Patient.text.div", "required")]


def test_contained_resource_with_error() -> None:
    resource = observation(
        contained=[{"resourceType": "Medication", "id": "m", "status": "bogus", "foo": 1}]
    )
    assert errors(resource) == [
        ("Observation.contained[0].status", "code-invalid"),
        ("Observation.contained[0].foo", "structure"),
    ]
    assert errors(observation(contained=[{"resourceType": "Nope"}])) == [
        ("Observation.contained[0]", "structure")
    ]


def test_bundle_entries_are_validated() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": observation(status="bogus"),
                "request": {"method": "POST", "url": "Observation"},
            },
            {"resource": patient(), "request": {"method": "PUT", "url": "Patient/p1"}},
        ],
    }
    assert errors(bundle) == [("Bundle.entry[0].resource.status", "code-invalid")]


def test_base64_binary() -> None:
    attachment = {"contentType": "text/plain", "data": "aGVsbG8/d29ybGQ="}
    assert errors(patient(photo=[attachment])) == []
    attachment = {"contentType": "text/plain", "data": "aGVsbG8!"}
    assert errors(patient(photo=[attachment])) == [("Patient.photo[0].data", "value")]


def test_issue_is_frozen() -> None:
    issue = validate_resource(patient(foo=1))[0]
    assert issue == Issue("error", "structure", issue.message, "Patient.foo")
    with pytest.raises(AttributeError):
        issue.code = "x"  # type: ignore[misc]


def test_messages_do_not_echo_values() -> None:
    secret = "SECRET-PATIENT-NAME"
    resource = patient(birthDate=secret, gender=secret, id=secret + "!")
    for issue in validate_resource(resource):
        assert secret not in issue.message


# --- the model ----------------------------------------------------------------


def test_model_lookups() -> None:
    assert "Patient" in model.RESOURCE_TYPES
    assert "DomainResource" not in model.RESOURCE_TYPES
    assert len(model.RESOURCE_TYPES) == 146
    status = model.element("Observation.status")
    assert status is not None and status.min == 1 and status.max == 1
    assert status.value_set == "http://hl7.org/fhir/ValueSet/observation-status"
    rr = model.element("Observation.component.referenceRange")
    assert rr is not None and rr.types == ("Observation.referenceRange",)
    assert model.element("Observation.referenceRange.low.value") is not None
    value = model.element("Observation.valueQuantity")
    assert value is not None and value.is_choice and "Quantity" in value.types
    system = model.element("Observation.code.coding.system")
    assert system is not None and system.types == ("uri",)
    subject = model.element("Observation.subject")
    assert subject is not None and subject.targets is not None and "Patient" in subject.targets
    assert model.element("Observation.nope") is None
    assert model.element("Nope.status") is None
    date = model.primitive("date")
    assert date is not None and date.json == "string" and date.regex
    gender = model.value_set("http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1")
    assert gender == {
        "http://hl7.org/fhir/administrative-gender": {"female", "male", "other", "unknown"}
    }
    assert "http://hl7.org/fhir/ValueSet/mimetypes" in model.unexpanded_value_sets()
    # R4 as published, without the edits of other distributions
    assert "project" not in model.type_def("Meta").elements
    assert "SubscriptionStatus" not in model.RESOURCE_TYPES


def test_model_file_is_compact() -> None:
    assert MODEL_FILE.stat().st_size < 1_500_000


def test_speed_on_sample_bundles() -> None:
    resources = [r for _, r in bundle_resources(sorted(DATA.glob("*.json.gz")))]
    for resource in resources:  # warm the per-type tables
        validate_resource(resource)
    times = []
    for resource in resources:
        start = time.perf_counter()
        validate_resource(resource)
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 0.001


def test_validation_does_not_modify_input() -> None:
    resource = observation(contained=[{"resourceType": "Patient", "id": "pat"}])
    before = copy.deepcopy(resource)
    validate_resource(resource)
    assert resource == before


# --- extended: every shared Synthea bundle --------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    not SHARED_BUNDLES.is_dir(),
    reason=f"shared Synthea corpus not found at {SHARED_BUNDLES} (optional, ../shared)",
)
def test_every_shared_synthea_resource_is_valid() -> None:
    paths = sorted(SHARED_BUNDLES.glob("*.json"))
    assert paths
    checked = ((where, errors(resource)) for where, resource in bundle_resources(paths))
    failures = [(where, found) for where, found in checked if found]
    assert failures == []
